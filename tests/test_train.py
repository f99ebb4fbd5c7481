"""The training loop: convergence, exact resume, accumulation, hooks, LR schedule."""

import json
import math
import shutil

import pytest
import torch
from torch import nn

from streamdistill.artifacts import ArtifactError
from streamdistill.ggsm import SoftMask
from streamdistill.train import latest_checkpoint, lr_at, train

TRUE_W = torch.tensor([[1.5, -2.0, 0.5, 3.0]])


def make_model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))


def full_batch(step, size=8):
    """Deterministic data of a step: a generator seeded by the step number."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(size, 4, generator=g)
    return {"x": x, "y": x @ TRUE_W.T, "n_tokens": size}


def mse_loss(model, batch, step):
    pred = model(batch["x"])
    loss = (pred - batch["y"]).pow(2).mean()
    return loss, {"abs_err": (pred - batch["y"]).abs().mean()}  # a tensor log is fine too


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def without_time(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


COMMON = dict(lr=1e-2, warmup_frac=0.1, grad_clip=1.0, seed=0, progress=False)


def test_loss_goes_down_and_history_is_complete():
    model = make_model()
    res = train(model, mse_loss, lambda s, m: full_batch(s), steps=150, **COMMON)
    h = res.history
    assert len(h) == 150 and [r["step"] for r in h] == list(range(150))
    first, last = sum(r["loss"] for r in h[:10]) / 10, sum(r["loss"] for r in h[-10:]) / 10
    assert last < 0.1 * first
    assert {"loss", "lr", "grad_norm", "seconds", "tokens", "tokens_total", "abs_err"} <= set(h[0])
    assert h[-1]["tokens_total"] == 150 * 8
    assert res.resumed_from is None and res.last_checkpoint is None


class Interrupt(Exception):
    pass


def test_resume_is_bit_identical(tmp_path):
    kw = dict(steps=12, checkpoint_every=4, **COMMON)
    ref_model = make_model(dropout=0.2)  # dropout makes the RNG state matter
    ref = train(ref_model, mse_loss, lambda s, m: full_batch(s), checkpoint_dir=tmp_path / "a", **kw)

    def interrupted(step, micro):
        if step == 10:
            raise Interrupt
        return full_batch(step)

    with pytest.raises(Interrupt):
        train(make_model(dropout=0.2), mse_loss, interrupted, checkpoint_dir=tmp_path / "b", **kw)
    assert latest_checkpoint(tmp_path / "b").name == "step-000008"

    model = make_model(seed=123, dropout=0.2)  # a different init: everything must come from the checkpoint
    res = train(model, mse_loss, lambda s, m: full_batch(s), checkpoint_dir=tmp_path / "b", **kw)
    assert res.resumed_from == 8
    for k, v in weights(ref_model).items():
        assert torch.equal(v, weights(model)[k]), k
    assert without_time(res.history) == without_time(ref.history)
    assert res.last_checkpoint.name == "step-000012"

    # a finished run returns at once from its final checkpoint
    again = make_model(seed=7, dropout=0.2)
    res2 = train(again, mse_loss, lambda s, m: pytest.fail("no step should run"), checkpoint_dir=tmp_path / "b", **kw)
    assert res2.resumed_from == 12 and len(res2.history) == 12
    assert all(torch.equal(v, weights(again)[k]) for k, v in weights(ref_model).items())

    # no pickles anywhere in a checkpoint
    files = {p.name for p in (tmp_path / "b" / "step-000012").iterdir()}
    assert files == {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json", "DONE.json"}


def test_incomplete_checkpoint_is_ignored(tmp_path):
    kw = dict(steps=6, checkpoint_every=2, **COMMON)
    ckpt = tmp_path / "ck"
    def interrupted(step, micro):
        if step == 5:
            raise Interrupt
        return full_batch(step)

    with pytest.raises(Interrupt):
        train(make_model(), mse_loss, interrupted, checkpoint_dir=ckpt, **kw)
    # fake a half-written newer checkpoint: same files, no DONE marker
    shutil.copytree(ckpt / "step-000004", ckpt / "step-000005")
    (ckpt / "step-000005" / "DONE.json").unlink()
    assert latest_checkpoint(ckpt).name == "step-000004"
    res = train(make_model(), mse_loss, lambda s, m: full_batch(s), checkpoint_dir=ckpt, **kw)
    assert res.resumed_from == 4 and len(res.history) == 6


def test_tied_and_frozen_weights_checkpoint(tmp_path):
    """Tied weights are saved once (safetensors refuses shared storage); frozen ones not at all."""

    class Tied(nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.emb = nn.Embedding(5, 4)
            self.frozen = nn.Linear(4, 4).requires_grad_(False)
            self.head = nn.Linear(4, 5, bias=False)
            self.head.weight = self.emb.weight
            torch.manual_seed(0)  # the frozen part must be the same in every build
            self.frozen.reset_parameters()

        def forward(self, ids):
            return self.head(self.frozen(self.emb(ids)))

    def loss_fn(model, batch, step):
        return nn.functional.cross_entropy(model(batch).flatten(0, 1), batch.flatten()), {}

    batch_fn = lambda s, m: torch.randint(0, 5, (2, 3), generator=torch.Generator().manual_seed(s))  # noqa: E731
    kw = dict(steps=4, checkpoint_every=2, **COMMON)
    ref = Tied(0)
    train(ref, loss_fn, batch_fn, checkpoint_dir=tmp_path / "a", **kw)
    from streamdistill.artifacts import load_tensors

    saved = load_tensors(tmp_path / "a" / "step-000004" / "model.safetensors")
    assert set(saved) == {"emb.weight"}
    resumed = Tied(1)
    res = train(resumed, loss_fn, batch_fn, checkpoint_dir=tmp_path / "a", **kw)
    assert res.resumed_from == 4
    assert resumed.head.weight is resumed.emb.weight
    assert all(torch.equal(v, weights(resumed)[k]) for k, v in weights(ref).items())


def test_resume_refuses_other_config(tmp_path):
    train(make_model(), mse_loss, lambda s, m: full_batch(s), steps=2, checkpoint_dir=tmp_path, **COMMON)
    with pytest.raises(ArtifactError, match="config"):
        train(make_model(), mse_loss, lambda s, m: full_batch(s), steps=3, checkpoint_dir=tmp_path, **COMMON)


def test_grad_accumulation_equals_full_batch():
    full = make_model()
    train(full, mse_loss, lambda s, m: full_batch(s), steps=5, grad_accum=1, **COMMON)

    def half(step, micro):
        b = full_batch(step)
        sl = slice(4 * micro, 4 * micro + 4)
        return {"x": b["x"][sl], "y": b["y"][sl], "n_tokens": 4}

    acc = make_model()
    res = train(acc, mse_loss, half, steps=5, grad_accum=2, **COMMON)
    for k, v in weights(full).items():
        assert torch.allclose(v, weights(acc)[k], atol=1e-6), k
    assert res.history[0]["tokens"] == 8


def test_after_backward_sees_gradients_before_the_step():
    model = make_model()
    seen = []

    def hook(step):
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads)
        seen.append((step, model[0].weight.detach().clone()))

    train(model, mse_loss, lambda s, m: full_batch(s), steps=3, after_backward=hook, **COMMON)
    assert [s for s, _ in seen] == [0, 1, 2]
    assert not torch.equal(seen[0][1], seen[1][1])  # the weights moved between hooks: called before step


def test_probes_land_in_history_without_changing_the_run():
    held = full_batch(10_000, size=32)
    seen_modes = []

    def probe(model, step):
        seen_modes.append(model.training)
        device = next(model.parameters()).device  # a probe brings its own data to the model's device
        pred = model(held["x"].to(device))
        assert not pred.requires_grad  # no graph is built for a probe
        return {"heldout_mse": (pred - held["y"].to(device)).pow(2).mean()}

    plain, probed = make_model(dropout=0.2), make_model(dropout=0.2)
    train(plain, mse_loss, lambda s, m: full_batch(s), steps=25, **COMMON)
    res = train(probed, mse_loss, lambda s, m: full_batch(s), steps=25, probe_fn=probe, probe_every=10, **COMMON)
    assert [r["step"] for r in res.history if "heldout_mse" in r] == [0, 9, 19, 24]
    assert seen_modes == [False] * 4 and probed.training  # eval mode for the probe, train mode restored
    assert all(torch.equal(a, b) for a, b in zip(weights(plain).values(), weights(probed).values()))
    curve = [r["heldout_mse"] for r in res.history if "heldout_mse" in r]
    assert curve[-1] < curve[0]


def test_lr_schedule_values():
    lr, steps, frac = 1.0, 100, 0.1  # 10 warm-up steps
    assert math.isclose(lr_at(0, steps=steps, lr=lr, warmup_frac=frac), 1 / 11)
    assert math.isclose(lr_at(9, steps=steps, lr=lr, warmup_frac=frac), 10 / 11)
    assert lr_at(10, steps=steps, lr=lr, warmup_frac=frac) == 1.0
    assert math.isclose(lr_at(55, steps=steps, lr=lr, warmup_frac=frac), 0.5, abs_tol=1e-12)
    last = lr_at(99, steps=steps, lr=lr, warmup_frac=frac)
    assert 0 < last < 1e-3
    assert lr_at(0, steps=10, lr=2.0, warmup_frac=0.0) == 2.0
    res = train(make_model(), mse_loss, lambda s, m: full_batch(s), steps=20, lr=0.3, warmup_frac=0.25,
                grad_clip=None, seed=0, progress=False)
    assert [r["lr"] for r in res.history] == [lr_at(s, steps=20, lr=0.3, warmup_frac=0.25) for s in range(20)]


def test_soft_mask_as_extra_state_resumes(tmp_path):
    """GG-SM wiring: watch in loss_fn, update in after_backward, state saved with checkpoints."""

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inp = nn.Linear(1, 8)
            self.out = nn.Linear(8, 1)

        def forward(self, x):
            return self.inp(x.unsqueeze(-1))

    def run(ckpt, fail_at=None):
        model, soft = Seq(), SoftMask(max_len=6, t_warm=4, t_total=8, decay=0.5)

        def loss_fn(model, batch, step):
            h = model(batch["x"])  # (B, L, H) "hidden states"
            w = soft.future_weights(step)
            if soft.is_warm(step):
                soft.watch(h, batch["mask"])
            pooled = (model.out(h).squeeze(-1) * batch["mask"]).sum(1) * w[0, 1]
            return (pooled - batch["y"]).pow(2).mean(), {}

        def batch_fn(step, micro):
            if step == fail_at:
                raise Interrupt
            g = torch.Generator().manual_seed(step)
            mask = (torch.arange(6) < torch.randint(2, 7, (4, 1), generator=g)).float()
            return {"x": torch.randn(4, 6, generator=g), "mask": mask, "y": torch.randn(4, generator=g)}

        res = train(model, loss_fn, batch_fn, steps=8, checkpoint_every=2, checkpoint_dir=ckpt,
                    after_backward=soft.update, extra_state=soft, **COMMON)
        return model, soft, res

    ref_model, ref_soft, ref = run(tmp_path / "a")
    assert ref_soft.frozen_weights is not None and ref_soft.n_updates == 4
    with pytest.raises(Interrupt):
        run(tmp_path / "b", fail_at=3)
    state = json.loads((tmp_path / "b" / "step-000002" / "state.json").read_text())
    assert state["extra"]["variant"] == "ggsm"
    model, soft, res = run(tmp_path / "b")
    assert res.resumed_from == 2
    assert torch.equal(soft.importance, ref_soft.importance)
    assert torch.equal(soft.frozen_weights, ref_soft.frozen_weights)
    assert all(torch.equal(v, weights(model)[k]) for k, v in weights(ref_model).items())
    assert without_time(res.history) == without_time(ref.history)

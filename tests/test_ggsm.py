"""GG-SM soft-mask state: warm-up EMA from gradients, freeze, schedule, variants, resume."""

import math

import pytest
import torch
from torch import nn

from streamdistill.ggsm import SoftMask
from streamdistill.profiles import get_profile


class Tiny(nn.Module):
    """Embedding -> mixing layer -> 'last hidden states' h -> head -> masked mean pool."""

    def __init__(self, vocab=11, dim=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, dim)

    def forward(self, ids, mask, soft=None, position_ids=None):
        h = torch.tanh(self.mix(self.emb(ids)))
        if soft is not None:
            soft.watch(h, mask, position_ids)
        out = self.head(h) * mask.unsqueeze(-1)
        return h, out.sum(1) / mask.sum(1, keepdim=True)


def batch(B=3, L=5, lengths=(5, 3, 2)):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (B, L), generator=g)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return ids, mask


def test_weights_start_at_half_and_past_is_one():
    m = SoftMask(max_len=6, t_warm=4, t_total=10)
    w = m.future_weights(0)
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    assert torch.all(w[future] == 0.5)
    assert torch.all(w[~future] == 1.0)
    assert m.frozen_weights is None
    assert m.mean_future_weight(0, 6) == 0.5


def test_hook_leaves_gradients_bit_identical():
    ids, mask = batch()
    grads = []
    for soft in (None, SoftMask(max_len=5, t_warm=3, t_total=6)):
        torch.manual_seed(0)
        model = Tiny()
        _, pooled = model(ids, mask, soft)
        pooled.pow(2).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        if soft is not None:
            soft.update(0)
            assert soft.n_updates == 1
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def _hidden_grad_norms(ids, mask, position_ids=None):
    """Reference ||dL/dh_j|| per token, computed with retain_grad (no hook)."""
    torch.manual_seed(0)
    model = Tiny()
    h, pooled = model(ids, mask)
    h.retain_grad()
    pooled.pow(2).sum().backward()
    return h.grad.norm(dim=-1)


def test_ema_matches_hand_computation_and_leaves_past_and_padding_at_zero():
    ids, mask = batch(lengths=(5, 3, 2))
    norms = _hidden_grad_norms(ids, mask)
    d = 0.8
    soft = SoftMask(max_len=7, t_warm=5, t_total=10, decay=d)
    for step in range(2):
        torch.manual_seed(0)
        model = Tiny()
        _, pooled = model(ids, mask, soft)
        pooled.pow(2).sum().backward()
        soft.update(step)

    # hand computation of Delta[i, j] = sum_b ||dL/dh_{b,j}|| over samples with i < j < len_b
    delta = torch.zeros(7, 7)
    covered = torch.zeros(7, 7, dtype=torch.bool)
    for b, n in enumerate((5, 3, 2)):
        for i in range(n):
            for j in range(i + 1, n):
                delta[i, j] += norms[b, j]
                covered[i, j] = True
    I1 = (1 - d) * delta
    I2 = d * I1 + (1 - d) * delta
    assert torch.allclose(soft.importance, torch.where(covered, I2, torch.zeros(7, 7)), atol=1e-6)
    # past (j <= i) and padding (beyond the longest sequence) stay exactly 0
    assert torch.all(soft.importance.tril() == 0)
    assert torch.all(soft.importance[:, 5:] == 0) and torch.all(soft.importance[5:, :] == 0)
    assert torch.all(soft.importance[covered] > 0)
    # the weights rise above 0.5 where gradient flowed, stay 0.5 elsewhere
    w = soft.future_weights(2)
    assert torch.all(w[covered] > 0.5)
    assert torch.all(w[~covered & torch.ones(7, 7, dtype=torch.bool).triu(1)] == 0.5)
    prof = soft.importance_profile()
    assert prof.shape == (7,) and prof[0] == 0 and prof[1] > 0 and prof[6] == 0


def test_cells_a_batch_does_not_reach_decay_towards_zero():
    """The EMA runs over every future cell: Delta = 0 where no sample of this batch reached."""
    d = 0.5
    soft = SoftMask(max_len=6, t_warm=10, t_total=20, decay=d)
    for step, lengths in enumerate([(5, 5), (3, 3)]):
        ids, mask = batch(B=2, L=5, lengths=lengths)
        torch.manual_seed(0)
        _, pooled = Tiny()(ids, mask, soft)
        pooled.pow(2).sum().backward()
        soft.update(step)
        if step == 0:
            after_long = soft.importance.clone()
    reached = torch.zeros(6, 6, dtype=torch.bool)
    reached[:3, :3] = True
    far = torch.ones(6, 6, dtype=torch.bool).triu(1) & ~reached
    assert torch.all(after_long[far & (torch.arange(6) < 5)] > 0)
    assert torch.allclose(soft.importance[far], d * after_long[far])  # decayed, nothing added
    assert torch.all(soft.importance.tril() == 0)  # past cells never touched


def test_position_ids_index_cells_for_left_padding():
    # the same sequence, right- and left-padded, must fill the same cells
    ids, mask = batch(B=1, L=5, lengths=(3,))
    right = SoftMask(max_len=5, t_warm=2, t_total=4, decay=0.5)
    left = SoftMask(max_len=5, t_warm=2, t_total=4, decay=0.5)
    torch.manual_seed(0)
    _, pooled = Tiny()(ids, mask, right)
    pooled.sum().backward()
    right.update(0)

    ids_l = torch.cat([ids[:, 3:], ids[:, :3]], 1)
    mask_l = torch.cat([mask[:, 3:], mask[:, :3]], 1)  # 0 0 1 1 1
    pos_l = torch.tensor([[1, 1, 0, 1, 2]])  # HF style: padding gets 1
    torch.manual_seed(0)
    _, pooled = Tiny()(ids_l, mask_l, left, pos_l)
    pooled.sum().backward()
    left.update(0)
    assert torch.allclose(left.importance, right.importance, atol=1e-6)
    assert torch.count_nonzero(left.importance) == 3  # (0,1), (0,2), (1,2)


def test_freeze_at_t_warm_and_schedule():
    ids, mask = batch()
    soft = SoftMask(max_len=5, t_warm=2, t_total=6, decay=0.5)
    for step in range(2):
        torch.manual_seed(0)
        _, pooled = Tiny()(ids, mask, soft)
        pooled.pow(2).sum().backward()
        soft.update(step)
    expected_W = soft.future_weights(1)
    w_warm_end = soft.future_weights(2)  # first step of the schedule: freezes W
    W = soft.frozen_weights
    assert W is not None and torch.equal(W, expected_W) and torch.equal(w_warm_end, W)

    # later observations are ignored: importance and W unchanged
    before = soft.importance.clone()
    torch.manual_seed(0)
    _, pooled = Tiny()(ids, mask, soft)
    pooled.pow(2).sum().backward()
    soft.update(3)
    assert torch.equal(soft.importance, before) and torch.equal(soft.frozen_weights, W)

    mid = soft.future_weights(4)  # alpha = (4 - 2) / (6 - 2) = 0.5
    assert torch.allclose(mid, 0.5 * W + 0.5)
    end = soft.future_weights(6)
    assert torch.equal(end, torch.ones(5, 5))
    assert torch.equal(torch.log(end), torch.zeros(5, 5))  # the bias is exactly 0
    assert soft.future_weights(100).eq(1.0).all()
    assert soft.mean_future_weight(6, 5) == 1.0


def test_update_freezes_too_and_diagnostics_do_not():
    soft = SoftMask(max_len=4, t_warm=2, t_total=4)
    soft.mean_future_weight(3, 4)  # a pure read
    assert soft.frozen_weights is None
    soft.update(2)
    assert soft.frozen_weights is not None


def test_hard_and_linear_variants():
    hard = SoftMask(max_len=4, t_warm=2, t_total=6, variant="hard")
    assert hard.future_weights(0).eq(1.0).all()
    linear = SoftMask(max_len=4, t_warm=2, t_total=6, variant="linear", warm_weight=0.2)
    future = torch.ones(4, 4, dtype=torch.bool).triu(1)
    # no gradient guidance: watch and update do nothing
    h = torch.randn(2, 4, 3, requires_grad=True)
    linear.watch(h, torch.ones(2, 4))
    h.sum().backward()
    linear.update(0)
    assert linear.importance.eq(0).all()
    assert linear.future_weights(1)[future].eq(0.2).all()
    w = linear.future_weights(4)  # alpha = 0.5
    assert torch.allclose(w[future], torch.full((6,), 0.6))
    assert linear.future_weights(6).eq(1.0).all()
    assert math.isclose(linear.mean_future_weight(3, 4), 0.75 * 0.2 + 0.25, rel_tol=1e-6)
    with pytest.raises(ValueError):
        SoftMask(max_len=4, t_warm=2, t_total=6, variant="nope")


def test_state_dict_resume_is_exact():
    ids, mask = batch()

    def run(soft, steps):
        for step in steps:
            soft.future_weights(step)
            torch.manual_seed(step)
            _, pooled = Tiny()(ids, mask, soft)
            pooled.pow(2).sum().backward()
            soft.update(step)

    full = SoftMask(max_len=5, t_warm=3, t_total=8, decay=0.7)
    run(full, range(6))
    part = SoftMask(max_len=5, t_warm=3, t_total=8, decay=0.7)
    run(part, range(2))
    state = part.state_dict()
    resumed = SoftMask(max_len=5, t_warm=3, t_total=8, decay=0.7)
    resumed.load_state_dict(state)
    run(resumed, range(2, 6))
    assert torch.equal(resumed.importance, full.importance)
    assert torch.equal(resumed.frozen_weights, full.frozen_weights)
    for step in (0, 3, 5, 8):
        assert torch.equal(resumed.future_weights(step), full.future_weights(step))
    with pytest.raises(ValueError):
        SoftMask(max_len=6, t_warm=3, t_total=8).load_state_dict(state)


def test_from_profile():
    p = get_profile("tiny")
    soft = SoftMask.from_profile(p)
    assert soft.t_total == p.train_steps and soft.t_warm == round(p.ggsm_warm_frac * p.train_steps)
    assert soft.max_len == p.max_length and soft.decay == p.ggsm_ema_decay


def test_positions_beyond_max_len_are_refused():
    soft = SoftMask(max_len=3, t_warm=2, t_total=4)
    with pytest.raises(ValueError, match="max_len"):
        soft.watch(torch.zeros(1, 4, 2, requires_grad=True), torch.ones(1, 4))


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_hook_leaves_a_real_decoders_gradients_bit_identical(architecture):
    """The same on a decoder under the soft mask: watching the last hidden states changes no gradient."""
    from streamdistill.encoder import Encoder, position_ids_from_mask
    from streamdistill.testing import tiny_decoder, tiny_tokenizer

    tok = tiny_tokenizer()
    batch_ = Encoder(tiny_decoder(architecture, len(tok)), tok).tokenize(["the cat sat on the mat", "a dog"])
    grads = []
    for watched in (False, True):
        encoder = Encoder(tiny_decoder(architecture, len(tok), seed=1), tok)
        soft = SoftMask(max_len=16, t_warm=3, t_total=6)
        out = encoder(**batch_, future_weights=soft.future_weights(0))
        if watched:
            mask = batch_["attention_mask"]
            soft.watch(out["hidden"], mask, position_ids_from_mask(mask))
        out["embedding"].pow(2).sum().backward()
        grads.append([p.grad.clone() for p in encoder.parameters() if p.grad is not None])
        if watched:
            soft.update(0)
            assert soft.n_updates == 1 and float(soft.importance.sum()) > 0
    assert len(grads[0]) == len(grads[1]) and all(torch.equal(a, b) for a, b in zip(*grads))


def _warm(variant: str, steps: int = 3, max_len: int = 5) -> SoftMask:
    """A mask warmed on the same batches: texts of lengths 5, 3 and 2 (cells past position 5 of a
    longer mask are never reached)."""
    ids, mask = batch()
    soft = SoftMask(max_len=max_len, t_warm=steps, t_total=2 * steps, decay=0.5, variant=variant)
    for step in range(steps):
        torch.manual_seed(step)
        _, pooled = Tiny()(ids, mask, soft)
        pooled.pow(2).sum().backward()
        soft.update(step)
    soft.future_weights(steps)  # freeze
    return soft


def test_reach_counts_the_texts_that_reach_each_cell():
    soft = _warm("ggsm", steps=1)
    # one update with decay 0.5: reach = 0.5 * (texts where both i and j are real)
    expected = torch.zeros(5, 5)
    for n in (5, 3, 2):
        expected[:n, :n] += 1
    torch.testing.assert_close(soft.reach, 0.5 * expected.triu(1))
    per_text = soft.importance_profile(per_text=True)
    assert torch.isnan(per_text[0]) and torch.isfinite(per_text[1:]).all()


def test_the_paper_mask_never_closes_a_cell_and_the_scaled_one_opens_and_closes():
    plain, scaled = _warm("ggsm", max_len=7), _warm("ggsm-scaled", max_len=7)
    p, s = plain.frozen_summary(), scaled.frozen_summary()
    assert p["min"] >= 0.5 and p["below_half"] == 0.0  # Delta >= 0: sigmoid(I) >= 0.5
    assert s["min"] < 0.5 < s["max"] and 0 < s["below_half"] < 1
    assert s["log_distance_from_linear"] > p["log_distance_from_linear"]
    assert torch.equal(plain.importance, scaled.importance)  # same gradients observed, another read-out
    # unreached cells stay at 0.5 in the scaled variant
    unreached = scaled._future & ~scaled.reached()
    assert int(unreached.sum()) == 7 * 6 // 2 - 5 * 4 // 2  # every future cell touching positions 5 and 6
    assert torch.all(scaled.frozen[unreached] == 0.5)


def test_softmask_saves_and_loads_its_whole_state(tmp_path):
    soft = _warm("ggsm-scaled")
    soft.save(tmp_path / "mask.safetensors")
    back = SoftMask.load(tmp_path / "mask.safetensors")
    assert (back.variant, back.t_warm, back.t_total, back.beta) == ("ggsm-scaled", 3, 6, 1.0)
    for name in ("importance", "reach", "frozen"):
        assert torch.equal(getattr(back, name), getattr(soft, name))
    assert torch.equal(back.future_weights(4), soft.future_weights(4))

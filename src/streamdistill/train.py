"""One training loop for every stage (base LM, baseline A, GG-SM teacher B, student C, LEAF).

The loop is deliberately plain (nanoGPT-style): AdamW, linear warm-up then cosine decay to 0,
gradient clipping, gradient accumulation, and ``accelerate`` for device placement and several
GPUs (``accelerate launch``). A stage supplies three functions:

* ``batch_fn(step, micro) -> batch``: the micro-batch ``micro`` of optimiser step ``step``. It
  must be a deterministic function of its arguments, which is what makes resuming exact without
  saving any data-loader state. On one process ``micro`` runs over ``0 .. grad_accum-1``; under
  ``N`` processes it runs over ``0 .. grad_accum*N-1`` globally and process ``r`` gets
  ``r, r+N, ...``, so ``batch_fn`` never needs to know how many processes there are. A batch
  (dict or object) may report ``n_tokens`` for the token axis of the curves.
* ``loss_fn(model, batch, step) -> (loss, logs)``: a scalar loss (mean over the micro-batch) and
  a dict of floats to log. ``model`` is the prepared model (DDP-wrapped under several processes),
  so call its ``forward`` rather than its submodules.
* ``after_backward(step)`` (optional): called once per optimiser step after all backward passes,
  before clipping and ``optimizer.step()``; GG-SM updates its importance there.

Checkpoints (``checkpoint_dir/step-000123/`` = 123 optimiser steps done) are built in a temporary
folder and renamed into place, with ``DONE.json`` written last; ``train`` resumes from the newest
complete one and ignores incomplete ones. Everything is safetensors + JSON — no pickles:

    model.safetensors      trainable parameters and buffers (frozen weights are rebuilt by the caller)
    optimizer.safetensors  optimiser state tensors, flattened as ``state.<param index>.<name>``
    rng.safetensors        torch CPU (and CUDA) generator states, numpy's key array
    extra.safetensors      tensors of ``extra_state`` (e.g. the GG-SM SoftMask)
    state.json             step, run config, history, param groups, non-tensor state
    DONE.json              written last
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import DONE, ArtifactError, atomic_dir, atomic_write_json, load_tensors, save_tensors

CKPT_RE = re.compile(r"^step-(\d{6,})$")
# history keys the loop owns; a loss_fn log with one of these names is stored as "log_<name>"
RESERVED = {"step", "loss", "lr", "grad_norm", "seconds", "tokens", "tokens_total"}


@dataclass
class TrainResult:
    """What ``train`` returns.

    ``history`` holds one dict per optimiser step: ``step``, ``loss``, ``lr``, ``grad_norm``,
    ``seconds`` (wall time of the step), ``tokens``/``tokens_total`` when batches report
    ``n_tokens``, and the ``loss_fn`` logs (averaged over micro-batches).
    """

    history: list[dict[str, Any]]
    steps: int
    resumed_from: int | None = None  # step of the checkpoint this run started from
    seconds: float = 0.0  # wall time of this call
    last_checkpoint: Path | None = None


def loss_ends(history: list[dict[str, Any]], share: float = 0.1) -> dict[str, float]:
    """``first_loss`` and ``last_loss``: the mean loss over the first and the last ``share`` of the
    steps (at least one each), the ends of a curve that a single noisy step would misstate."""
    losses = [row["loss"] for row in history]
    if not losses:
        return {"first_loss": float("nan"), "last_loss": float("nan")}
    k = max(1, int(len(losses) * share))
    return {"first_loss": float(np.mean(losses[:k])), "last_loss": float(np.mean(losses[-k:]))}


def lr_at(step: int, *, steps: int, lr: float, warmup_frac: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine to 0.

    Warm-up lasts ``W = round(warmup_frac * steps)`` steps with ``lr * (step+1) / (W+1)``; then
    ``lr * 0.5 * (1 + cos(pi * (step - W) / (steps - W)))``, which would reach 0 at ``step = steps``
    (one past the last step, so no step is wasted at lr 0).
    """
    warmup = int(round(warmup_frac * steps))
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def latest_checkpoint(checkpoint_dir: str | Path | None) -> Path | None:
    """The newest complete (``DONE.json`` present) checkpoint under ``checkpoint_dir``, or None."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    found = []
    for child in Path(checkpoint_dir).iterdir():
        match = CKPT_RE.match(child.name)
        if match and child.is_dir() and (child / DONE).exists():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


# ---------------------------------------------------------------------------- state <-> files


def _model_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Trainable parameters and buffers of ``model``, tied tensors saved once.

    Returns (tensors, aliases) where ``aliases[name] = saved name`` for tied duplicates.
    Frozen parameters (a LoRA base model, a frozen teacher) are not saved: they do not change,
    and the caller rebuilds them before resuming.
    """
    keep = {id(p) for p in model.parameters() if p.requires_grad} | {id(b) for b in model.buffers()}
    tensors, aliases, seen = {}, {}, {}
    for name, value in model.state_dict(keep_vars=True).items():
        if id(value) not in keep:
            continue
        if id(value) in seen:  # safetensors refuses shared storage; remember the tie instead
            aliases[name] = seen[id(value)]
            continue
        seen[id(value)] = name
        tensors[name] = value.detach()
    return tensors, aliases


def _load_model_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise ArtifactError(f"checkpoint has weights this model lacks: {result.unexpected_keys[:5]}")
    missing_trainable = set(result.missing_keys) & {n for n, p in model.named_parameters() if p.requires_grad}
    if missing_trainable:
        raise ArtifactError(f"checkpoint lacks trainable weights: {sorted(missing_trainable)[:5]}")


def _split_state(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten a nested state dict into (tensors by dotted key, JSON-able rest by dotted key)."""
    tensors, rest = {}, {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, dict):
            sub_t, sub_r = _split_state(value, f"{name}.")
            tensors.update(sub_t)
            rest.update(sub_r)
            if not value:
                rest[name] = {}
        else:
            rest[name] = value
    return tensors, rest


def _join_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``_split_state`` (keys are split on dots)."""
    state: dict[str, Any] = {}
    for name, value in list(rest.items()) + list(tensors.items()):
        node = state
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return state


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, rest = _split_state({str(k): v for k, v in sd["state"].items()}, "state.")
    return tensors, {"state": rest, "param_groups": sd["param_groups"]}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    joined = _join_state(tensors, meta["state"]).get("state", {})
    groups = []
    for group in meta["param_groups"]:
        # JSON turned tuples (AdamW's betas) into lists; give them back their type
        groups.append({k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in group.items()})
    return {"state": {int(k): v for k, v in joined.items()}, "param_groups": groups}


def _rng_to_files() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    np_state = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    meta = {
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": json.loads(json.dumps(random.getstate())),
    }
    return tensors, meta


def _rng_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in tensors]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: list[dict[str, Any]],
    config: dict[str, Any],
    extra_state: Any = None,
) -> Path:
    """Write one checkpoint folder atomically (temp folder, DONE.json last, rename)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        model_t, aliases = _model_tensors(model)
        save_tensors(tmp / "model.safetensors", model_t)
        opt_t, opt_meta = _optimizer_to_files(optimizer)
        save_tensors(tmp / "optimizer.safetensors", opt_t)
        rng_t, rng_meta = _rng_to_files()
        save_tensors(tmp / "rng.safetensors", rng_t)
        extra_meta = None
        if extra_state is not None:
            extra_t, extra_meta = _split_state(extra_state.state_dict())
            save_tensors(tmp / "extra.safetensors", extra_t)
        state = {
            "step": step,
            "scheduler_step": step,  # the LR is a pure function of the step (see lr_at)
            "config": config,
            "history": history,
            "optimizer": opt_meta,
            "rng": rng_meta,
            "model_aliases": aliases,
            "extra": extra_meta,
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        atomic_write_json(tmp / DONE, {"step": step})
    return path


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra_state: Any = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore model, optimiser, RNG and ``extra_state`` in place; returns ``state.json``.

    Refuses a checkpoint written with a different run config (steps, lr, seed, ...), since
    resuming it would silently mix two runs.
    """
    path = Path(path)
    if not (path / DONE).exists():
        raise ArtifactError(f"{path} is an incomplete checkpoint (no {DONE})")
    state = json.loads((path / "state.json").read_text())
    if config is not None and state["config"] != json.loads(json.dumps(config)):
        raise ArtifactError(
            f"checkpoint {path} was written by a run with config {state['config']}, not {config}; "
            "use another checkpoint_dir or delete it"
        )
    _load_model_tensors(model, load_tensors(path / "model.safetensors"))
    optimizer.load_state_dict(_optimizer_from_files(load_tensors(path / "optimizer.safetensors"), state["optimizer"]))
    if extra_state is not None:
        if state.get("extra") is None:
            raise ArtifactError(f"checkpoint {path} has no extra_state to restore")
        extra_state.load_state_dict(_join_state(load_tensors(path / "extra.safetensors"), state["extra"]))
    _rng_from_files(load_tensors(path / "rng.safetensors"), state["rng"])
    return state


# ---------------------------------------------------------------------------- the loop


def _n_tokens(batch: Any) -> int | None:
    value = batch.get("n_tokens") if isinstance(batch, dict) else getattr(batch, "n_tokens", None)
    return None if value is None else int(value)


CHECKPOINT_EVERY = 100  # optimiser steps between resumable checkpoints of a stage


def stage_checkpoints(folder: str | Path, steps: int) -> dict[str, Any]:
    """The one checkpoint rule of the stages, as keyword arguments for :func:`train`.

    A run of at least :data:`CHECKPOINT_EVERY` steps checkpoints into ``folder`` every
    :data:`CHECKPOINT_EVERY` steps (and at the end), keeping only the newest, so an interrupted
    build resumes; a shorter run (the tiny profile) costs less to redo than to checkpoint.
    """
    if steps < CHECKPOINT_EVERY:
        return {"checkpoint_dir": None}
    return {"checkpoint_dir": Path(folder), "checkpoint_every": CHECKPOINT_EVERY, "keep_last": 1}


def train(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any, int], tuple[torch.Tensor, dict[str, float]]],
    batch_fn: Callable[[int, int], Any],
    *,
    steps: int,
    lr: float,
    warmup_frac: float,
    grad_clip: float | None,
    grad_accum: int = 1,
    weight_decay: float = 0.0,
    seed: int,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    keep_last: int | None = None,
    after_backward: Callable[[int], None] | None = None,
    probe_fn: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
    probe_every: int | None = None,
    extra_state: Any = None,
    log_every: int = 10,
    progress: bool = True,
    desc: str = "train",
    accelerator: Any = None,
) -> TrainResult:
    """Train ``model`` for ``steps`` optimiser steps; resume from ``checkpoint_dir`` if possible.

    Args:
        steps, lr, warmup_frac: the schedule (see :func:`lr_at`).
        grad_clip: max global gradient norm (None or 0: no clipping; the norm is still logged).
        grad_accum: micro-batches per optimiser step; each backward uses ``loss / grad_accum``
            so ``k`` micro-batches of size ``B/k`` give the gradient of one batch of size ``B``.
        weight_decay: AdamW's decoupled weight decay.
        seed: seeds torch, numpy and ``random`` at the start of a fresh run (a resumed run
            restores the generator states instead). Build the model before calling ``train``.
        checkpoint_dir: where checkpoints go; a checkpoint is also written after the last step,
            so calling ``train`` again on a finished run returns at once.
        checkpoint_every: write a checkpoint every this many steps (None: only at the end).
        keep_last: keep only the newest ``keep_last`` checkpoints (None: keep all).
        after_backward: ``f(step)`` after the backward passes, before clipping and the step.
        probe_fn: ``f(model, step) -> {name: float}``, a held-out measurement taken in eval mode
            without gradients after the update of the first step, of every ``probe_every``-th
            step and of the last; it lands in that step's history row. It must not draw random
            numbers (so a run's weights are the same with or without probes), and it brings its
            own data to the model's device (batches from ``batch_fn`` are moved for it; probes are not).
        extra_state: object with ``state_dict``/``load_state_dict`` saved with each checkpoint.
        log_every: refresh the progress bar's loss every this many steps.
        progress: show a tqdm bar (main process only).
        accelerator: an ``accelerate.Accelerator`` to use (default: a new one).
    """
    from accelerate import Accelerator
    from tqdm import tqdm

    if steps < 0 or grad_accum < 1:
        raise ValueError(f"need steps >= 0 and grad_accum >= 1, got steps={steps}, grad_accum={grad_accum}")
    started = time.perf_counter()
    accelerator = accelerator or Accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    # the run's identity: a checkpoint from another config must not be resumed into this one
    config = {
        "steps": steps,
        "lr": lr,
        "warmup_frac": warmup_frac,
        "grad_clip": grad_clip,
        "grad_accum": grad_accum,
        "weight_decay": weight_decay,
        "seed": seed,
        "num_processes": world,
    }

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameter with requires_grad=True")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    was_training = raw_model.training

    history: list[dict[str, Any]] = []
    start, resumed_from, last_ckpt = 0, None, None
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        state = load_checkpoint(latest, model=raw_model, optimizer=optimizer, extra_state=extra_state, config=config)
        start = resumed_from = int(state["step"])
        history = state["history"]
        last_ckpt = latest

    def checkpoint(step: int) -> None:
        nonlocal last_ckpt
        if ckpt_dir is None:
            return
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            last_ckpt = save_checkpoint(
                ckpt_dir / checkpoint_name(step),
                model=raw_model,
                optimizer=optimizer,
                step=step,
                history=history,
                config=config,
                extra_state=extra_state,
            )
            if keep_last:
                done_ckpts = [p for p in ckpt_dir.iterdir() if CKPT_RE.match(p.name)]
                done_ckpts.sort(key=lambda p: int(CKPT_RE.match(p.name).group(1)))
                for p in done_ckpts[:-keep_last]:
                    shutil.rmtree(p, ignore_errors=True)
        else:
            last_ckpt = ckpt_dir / checkpoint_name(step)
        accelerator.wait_for_everyone()

    bar = tqdm(
        total=steps,
        initial=start,
        desc=desc,
        disable=not progress or not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    tokens_total = history[-1].get("tokens_total", 0) if history else 0
    model.train()
    try:
        for step in range(start, steps):
            t0 = time.perf_counter()
            current_lr = lr_at(step, steps=steps, lr=lr, warmup_frac=warmup_frac)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            optimizer.zero_grad(set_to_none=True)

            loss_sum, logs_sum, n_tok = 0.0, {}, None
            for micro in range(grad_accum):
                batch = batch_fn(step, micro * world + rank)
                tok = _n_tokens(batch)
                if tok is not None:
                    n_tok = (n_tok or 0) + tok
                batch = _to_device(batch, accelerator.device)
                # only the last micro-batch synchronises gradients across processes
                sync = contextlib.nullcontext() if micro == grad_accum - 1 else accelerator.no_sync(model)
                with sync:
                    loss, logs = loss_fn(model, batch, step)
                    accelerator.backward(loss / grad_accum)
                loss_sum += float(loss.detach())
                for key, value in (logs or {}).items():
                    value = value.detach() if isinstance(value, torch.Tensor) else value
                    logs_sum[key] = logs_sum.get(key, 0.0) + float(value)

            if after_backward is not None:
                after_backward(step)
            if grad_clip:
                grad_norm = float(accelerator.clip_grad_norm_(params, grad_clip))
            else:
                grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
                grad_norm = float(torch.stack(grads).norm()) if grads else 0.0
            optimizer.step()

            loss_value = loss_sum / grad_accum
            if world > 1:  # log the mean over processes (and the tokens of all of them)
                loss_value = float(accelerator.reduce(torch.tensor(loss_value, device=accelerator.device), "mean"))
                if n_tok is not None:
                    n_tok = int(accelerator.reduce(torch.tensor(n_tok, device=accelerator.device), "sum"))
            row: dict[str, Any] = {"step": step, "loss": loss_value, "lr": current_lr, "grad_norm": grad_norm}
            if n_tok is not None:
                tokens_total += n_tok
                row["tokens"], row["tokens_total"] = n_tok, tokens_total
            for key, value in logs_sum.items():
                row[f"log_{key}" if key in RESERVED else key] = value / grad_accum
            row["seconds"] = time.perf_counter() - t0
            if probe_fn is not None and probe_every and (step == 0 or (step + 1) % probe_every == 0
                                                         or step == steps - 1):
                row.update(_probe(probe_fn, model, step))
            history.append(row)

            bar.update(1)
            if step % max(1, log_every) == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{current_lr:.2e}")
            done = step + 1
            if checkpoint_every and done % checkpoint_every == 0 and done < steps:
                checkpoint(done)
        if ckpt_dir is not None and steps > start:
            checkpoint(steps)
    finally:
        bar.close()
        raw_model.train(was_training)

    return TrainResult(
        history=history,
        steps=steps,
        resumed_from=resumed_from,
        seconds=time.perf_counter() - started,
        last_checkpoint=last_ckpt,
    )


def _probe(probe_fn: Callable[[torch.nn.Module, int], dict[str, float]], model: torch.nn.Module,
           step: int) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return {key: float(value) for key, value in probe_fn(model, step).items()}
    finally:
        model.train(was_training)


def _to_device(batch: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested) batch to ``device``; everything else passes through."""
    from accelerate.utils import send_to_device

    return send_to_device(batch, device)

"""Gradient-Guided Soft Masking (GG-SM): the state behind the teacher's soft attention mask.

A causal LM becomes a bidirectional embedding teacher by opening its attention to future tokens
*gradually*. The encoder adds a bias ``M`` to the attention logits::

    M[i, j] = 0            for j <= i   (the past, as in the causal LM)
    M[i, j] = log w[i, j]  for j > i    (the future, softly)

and this module owns ``w``. Three phases (``t`` = optimiser step):

1. warm-up, ``t < t_warm``: ``w = sigmoid(I)``, where the importance matrix ``I`` (max_len x
   max_len, zeros at the start, so future tokens begin at weight 0.5) follows an EMA of the
   gradient magnitude that reaches each key position::

       I <- d * I + (1 - d) * Delta,   Delta[i, j] = sum over the batch of ||dL/dh_j||_2

   for every valid future pair ``j > i`` (h = last-layer hidden states, valid = not padding).
2. schedule, ``t_warm <= t < t_total``: ``W = sigmoid(I)`` is frozen at ``t_warm`` and
   ``w = (1 - a) * W + a`` with ``a = (t - t_warm) / (t_total - t_warm)``.
3. ``t >= t_total``: ``w = 1`` everywhere, so the bias ``log 1`` is exactly 0: fully bidirectional,
   which is also what inference uses.

Indices ``i, j`` are *token positions* (``position_ids``), so left- and right-padded batches fill
the same cells. Two ablations share the code path: ``hard`` (fully bidirectional from step 0) and
``linear`` (a constant ``warm_weight`` during warm-up, no gradient guidance, then the same schedule).

``ggsm-scaled`` is *not the paper's method*: a variant that tests whether gradient guidance matters
once it really shapes the mask. Delta is a raw sum of gradient norms (~0.02-0.1 per step at small
scale), so ``sigmoid(I)`` stays within a hair of 0.5, and since Delta >= 0 no cell ever closes below
0.5. ``ggsm-scaled`` centres and scales I over the reached future cells before the sigmoid,
``w = sigmoid(beta * (I - mean) / std)``, so W spans both sides of 0.5 (about [0.1, 0.9] at
beta = 1); cells no text reached stay at 0.5.

Alongside I the mask keeps ``reach``, the same EMA of how many texts reach each cell, so the
importance *per text* (``I / reach``) separates where gradients point from how long the texts are.

Typical use inside a training loop (see :mod:`streamdistill.train`)::

    mask = SoftMask.from_profile(profile, max_len=profile.max_length)
    w = mask.future_weights(step)              # -> encoder.attention_bias(..., future_weights=w)
    h = last_hidden_states                     # (B, L, H), part of the graph
    if mask.is_warm(step):
        mask.watch(h, attention_mask)          # a read-only gradient hook
    loss.backward()
    mask.update(step)                          # after backward (train(after_backward=mask.update))

Gradient magnitudes are observed with a tensor hook that only *reads* the gradient and returns
None, so training is bit-identical with or without observation.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from .artifacts import ArtifactError, data_parallel_world, load_tensors, save_tensors

VARIANTS = ("ggsm", "hard", "linear", "ggsm-scaled")
GUIDED = ("ggsm", "ggsm-scaled")  # the variants that observe gradients


class SoftMask:
    """GG-SM soft-mask state: importance EMA, freeze, schedule, diagnostics, state_dict.

    Args:
        max_len: the longest training sequence (positions ``0 .. max_len-1``).
        t_warm: first step of the schedule phase (end of warm-up); ``W`` is frozen here.
        t_total: first fully bidirectional step.
        decay: EMA decay ``d`` of the importance matrix.
        variant: ``"ggsm"`` (the method), ``"hard"`` (bidirectional from step 0), ``"linear"``
            (constant ``warm_weight`` during warm-up, then the linear schedule) or ``"ggsm-scaled"``
            (not the paper's: I centred and scaled by ``beta`` before the sigmoid).
        warm_weight: the ``linear`` variant's future weight during warm-up.
        beta: the ``ggsm-scaled`` variant's slope on the standardised importance.
    """

    def __init__(
        self,
        max_len: int,
        t_warm: int,
        t_total: int,
        decay: float = 0.9,
        variant: str = "ggsm",
        warm_weight: float = 0.5,
        beta: float = 1.0,
        device: torch.device | str = "cpu",
    ):
        if variant not in VARIANTS:
            raise ValueError(f"unknown soft-mask variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if not 0 <= t_warm <= t_total:
            raise ValueError(f"need 0 <= t_warm <= t_total, got t_warm={t_warm}, t_total={t_total}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        if not 0.0 <= warm_weight <= 1.0:
            raise ValueError(f"warm_weight must lie in [0, 1], got {warm_weight}")
        self.max_len = int(max_len)
        self.t_warm = int(t_warm)
        self.t_total = int(t_total)
        self.decay = float(decay)
        self.variant = variant
        self.warm_weight = float(warm_weight)
        self.beta = float(beta)
        self.importance = torch.zeros(max_len, max_len, device=device)
        self.reach = torch.zeros(max_len, max_len, device=device)  # EMA of texts reaching each cell
        self.frozen: torch.Tensor | None = None  # W, set once at t_warm
        self.n_updates = 0  # EMA updates applied so far (diagnostic)
        # strictly-upper-triangular mask of future pairs (j > i); fixed, so built once
        self._future = torch.ones(max_len, max_len, dtype=torch.bool, device=device).triu(1)
        # gradient observations of the current optimiser step: (norms, valid, positions) per watch()
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @classmethod
    def from_profile(cls, profile: Any, max_len: int | None = None, variant: str = "ggsm", **kw) -> SoftMask:
        """A mask for ``profile.train_steps`` steps with ``T_warm = ggsm_warm_frac * T_total``."""
        t_total = int(profile.train_steps)
        return cls(
            max_len=int(max_len or profile.max_length),
            t_warm=int(round(profile.ggsm_warm_frac * t_total)),
            t_total=t_total,
            decay=profile.ggsm_ema_decay,
            variant=variant,
            warm_weight=profile.linear_warm_weight,
            beta=profile.ggsm_scaled_beta,
            **kw,
        )

    def __repr__(self) -> str:
        return (
            f"SoftMask(variant={self.variant!r}, max_len={self.max_len}, t_warm={self.t_warm}, "
            f"t_total={self.t_total}, decay={self.decay}, frozen={self.frozen is not None})"
        )

    @property
    def device(self) -> torch.device:
        return self.importance.device

    def to(self, device: torch.device | str) -> SoftMask:
        """Move the state to ``device`` (in place; returns self, like ``nn.Module.to``)."""
        self.importance = self.importance.to(device)
        self.reach = self.reach.to(device)
        self._future = self._future.to(device)
        if self.frozen is not None:
            self.frozen = self.frozen.to(device)
        return self

    # ------------------------------------------------------------------ phases and weights

    def is_warm(self, step: int) -> bool:
        """True while gradients are being observed (GG-SM warm-up); use it to skip ``watch``."""
        return self.variant in GUIDED and step < self.t_warm

    @property
    def frozen_weights(self) -> torch.Tensor | None:
        """``W`` frozen at the end of warm-up (None before ``t_warm`` has been reached)."""
        return self.frozen

    def reached(self) -> torch.Tensor:
        """Future cells some text has reached during warm-up (``reach > 0``)."""
        return self._future & (self.reach > 0)

    def _warm_weights(self) -> torch.Tensor:
        """The warm-up weights on future cells (1 elsewhere): sigmoid(I) (ggsm), sigmoid(beta * z(I))
        over the reached cells (ggsm-scaled; unreached cells 0.5) or the constant (linear)."""
        if self.variant == "linear":
            future = torch.full_like(self.importance, self.warm_weight)
        elif self.variant == "ggsm-scaled":
            cells = self.reached()
            z = torch.zeros_like(self.importance)
            if int(cells.sum()) > 1:
                values = self.importance[cells]
                std = values.std()
                if float(std) > 0:
                    z = torch.where(cells, (self.importance - values.mean()) / std, z)
            future = torch.sigmoid(self.beta * z)
        else:
            future = torch.sigmoid(self.importance)
        return torch.where(self._future, future, torch.ones_like(future))

    def _freeze(self) -> None:
        if self.frozen is None:
            self.frozen = self._warm_weights()
            self._pending.clear()  # observations after the freeze would be ignored anyway

    def _weights(self, step: int, W: torch.Tensor | None) -> torch.Tensor:
        """Weights at ``step``, given the frozen ``W`` (or what it would be)."""
        if self.variant == "hard" or step >= self.t_total:
            # exactly 1 so that the encoder's bias log(1) is exactly 0: truly bidirectional
            return torch.ones_like(self.importance)
        if step < self.t_warm:
            return self._warm_weights()
        alpha = (step - self.t_warm) / (self.t_total - self.t_warm)
        return (1.0 - alpha) * W + alpha

    @torch.no_grad()
    def future_weights(self, step: int) -> torch.Tensor:
        """``w`` (max_len x max_len) at optimiser step ``step``; entries ``j <= i`` are 1 (unused).

        The first call with ``step >= t_warm`` freezes ``W``.
        """
        if step >= self.t_warm and self.variant != "hard":
            self._freeze()
        return self._weights(step, self.frozen)

    # ------------------------------------------------------------------ gradient observation

    def watch(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> None:
        """Observe ``||dL/dh_j||_2`` for the last-layer hidden states ``hidden`` (B, L, H).

        Registers a tensor hook that reads the gradient during ``backward`` and returns None,
        so the gradient itself is never changed. Call once per micro-batch; ``update`` then
        folds every observation of the optimiser step into the importance EMA. Does nothing
        when ``hidden`` does not require grad or gradients are not needed (hard/linear).
        """
        if self.variant not in GUIDED or not hidden.requires_grad:
            return
        B, L = hidden.shape[:2]
        valid = (
            torch.ones(B, L, dtype=torch.bool, device=hidden.device)
            if attention_mask is None
            else attention_mask.detach().bool()
        )
        if position_ids is None:  # right padding: the token index is the position
            positions = torch.arange(L, device=hidden.device).expand(B, L)
        else:
            positions = position_ids.detach().long().expand(B, L)
        # padding tokens may carry any position id (HF uses 1 for left padding); park them at 0,
        # where their zero weight in update() makes them invisible
        positions = torch.where(valid, positions, torch.zeros_like(positions))
        if bool((positions[valid] >= self.max_len).any()) or bool((positions[valid] < 0).any()):
            raise ValueError(
                f"token positions must lie in [0, {self.max_len}) for this SoftMask; "
                f"got max {int(positions[valid].max())} — raise max_len or truncate the batch"
            )

        def _read(grad: torch.Tensor) -> None:
            # per-token gradient norm, summed later over the batch; returning None keeps grad as is
            self._pending.append((grad.detach().float().norm(dim=-1), valid, positions))
            return None

        hidden.register_hook(_read)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold this step's gradient observations into ``I`` (warm-up only; no-op otherwise).

        ``Delta[i, j] = sum_b ||dL/dh_j||`` over samples where positions i < j are both valid, and
        ``I <- d I + (1 - d) Delta`` on every future cell (one no sample reached decays towards 0);
        past cells (j <= i) are never touched. Under several data-parallel processes
        (``accelerate launch``) Delta is averaged across them, so every replica keeps the same
        mask, independent of the process count.
        """
        pending, self._pending = self._pending, []
        if self.variant == "hard":
            return
        if step >= self.t_warm:
            self._freeze()
            return
        if self.variant not in GUIDED or not pending:
            return
        n = self.max_len
        delta = torch.zeros(n, n, device=self.device)
        counts = torch.zeros(n, n, device=self.device)
        for norms, valid, positions in pending:
            B = norms.shape[0]
            pos = positions.to(self.device)
            ok = valid.to(self.device).float()
            # scatter tokens onto position slots: V[b, p] = 1 if p is a valid position of sample b,
            # G[b, p] = ||dL/dh|| of that token; then Delta = V^T G (future cells kept below)
            V = torch.zeros(B, n, device=self.device).scatter_add_(1, pos, ok)
            G = torch.zeros(B, n, device=self.device).scatter_add_(1, pos, norms.to(self.device) * ok)
            delta += V.T @ G
            counts += V.T @ V
        world = _data_parallel_world()
        if world > 1:
            # each process saw its shard; its per-token gradients are those of its *local* mean loss,
            # i.e. `world` times those of the global mean, so the mean over processes equals what
            # one process would measure on the whole batch (and every replica gets the same I)
            torch.distributed.all_reduce(delta)
            torch.distributed.all_reduce(counts)
            delta /= world
            counts /= world
        # The EMA runs over every future cell, as the method states it: a cell no sample of this
        # batch reached has Delta = 0 and decays towards 0 (w towards 0.5); past cells stay 0.
        ema = self.decay * self.importance + (1.0 - self.decay) * delta
        self.importance = torch.where(self._future, ema, self.importance)
        reach = self.decay * self.reach + (1.0 - self.decay) * counts
        self.reach = torch.where(self._future, reach, self.reach)
        self.n_updates += 1

    # ------------------------------------------------------------------ diagnostics

    @torch.no_grad()
    def mean_future_weight(self, step: int, length: int) -> float:
        """Mean ``w[i, j]`` over the future pairs ``0 <= i < j < length`` at ``step``.

        A pure read: unlike ``future_weights`` it never freezes (it uses what W would be).
        Returns 1.0 for ``length < 2`` (no future pair, nothing masked).
        """
        length = min(int(length), self.max_len)
        if length < 2:
            return 1.0
        W = self.frozen if self.frozen is not None else self._warm_weights()
        w = self._weights(step, W)[:length, :length]
        return float(w[self._future[:length, :length]].mean())

    @torch.no_grad()
    def importance_profile(self, per_text: bool = False) -> torch.Tensor:
        """Mean importance per key position ``j`` over the queries ``i < j`` (length max_len).

        With ``per_text`` each cell is first divided by how many texts reached it (``reach``), so
        the profile shows where gradients point rather than how many texts are that long; cells no
        text reached are left out (NaN where none of a position's cells was reached). Position 0 has
        no earlier query and reports 0 (NaN per text).
        """
        if per_text:
            cells = self.reached()
            ratio = torch.where(cells, self.importance / self.reach.clamp(min=1e-12), torch.zeros_like(self.importance))
            n = cells.sum(0)
            return torch.where(n > 0, ratio.sum(0) / n.clamp(min=1), torch.full_like(ratio[0], float("nan"))).cpu()
        sums = (self.importance * self._future).sum(0)
        counts = torch.arange(self.max_len, device=self.device).clamp(min=1)
        return (sums / counts).cpu()

    @torch.no_grad()
    def frozen_summary(self) -> dict[str, float]:
        """The frozen W over the reached future cells: min, max, mean, and its distance from the
        ``linear`` variant's constant 0.5 as a mean |log W - log 0.5| in nats (the attention bias
        differs by that much). Empty before the freeze."""
        if self.frozen is None:
            return {}
        cells = self.reached()
        if not bool(cells.any()):
            cells = self._future
        w = self.frozen[cells].double()
        return {"min": float(w.min()), "max": float(w.max()), "mean": float(w.mean()),
                "below_half": float((w < 0.5).double().mean()),
                "log_distance_from_linear": float((w.log() - math.log(0.5)).abs().mean()), "cells": int(cells.sum())}

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Tensors (importance, frozen W) plus the config scalars; enough to resume exactly."""
        state: dict[str, Any] = {
            "importance": self.importance.detach().clone(),
            "reach": self.reach.detach().clone(),
            "max_len": self.max_len,
            "t_warm": self.t_warm,
            "t_total": self.t_total,
            "decay": self.decay,
            "variant": self.variant,
            "warm_weight": self.warm_weight,
            "beta": self.beta,
            "n_updates": self.n_updates,
        }
        if self.frozen is not None:
            state["frozen"] = self.frozen.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; refuses the state of a differently configured mask."""
        for key in ("max_len", "t_warm", "t_total", "variant"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"SoftMask state has {key}={state[key]!r} but this mask has {getattr(self, key)!r}")
        for key in ("decay", "warm_weight", "beta"):
            if key in state and not math.isclose(float(state[key]), getattr(self, key)):
                raise ValueError(f"SoftMask state has {key}={state[key]!r} but this mask has {getattr(self, key)!r}")
        importance = state["importance"]
        if tuple(importance.shape) != (self.max_len, self.max_len):
            raise ValueError(f"importance of shape {tuple(importance.shape)} does not fit max_len={self.max_len}")
        self.importance = importance.detach().clone().float().to(self.device)
        reach = state.get("reach")
        self.reach = torch.zeros_like(self.importance) if reach is None else reach.detach().clone().float().to(self.device)
        frozen = state.get("frozen")
        self.frozen = None if frozen is None else frozen.detach().clone().float().to(self.device)
        self.n_updates = int(state.get("n_updates", 0))
        self._pending = []

    def save(self, path) -> None:
        """Write the state (tensors as safetensors, the config scalars in its metadata), atomically."""
        state = self.state_dict()
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        scalars = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
        save_tensors(path, tensors, metadata={"softmask": json.dumps(scalars)})

    @classmethod
    def load(cls, path) -> SoftMask:
        """A mask rebuilt from :meth:`save`'s file, exactly as it was at the end of training."""
        from safetensors import safe_open

        tensors = load_tensors(path)
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("softmask")
        if raw is None:
            raise ArtifactError(f"{path} holds no SoftMask configuration (written by an older version); rebuild it")
        scalars = json.loads(raw)
        mask = cls(max_len=scalars["max_len"], t_warm=scalars["t_warm"], t_total=scalars["t_total"],
                   decay=scalars["decay"], variant=scalars["variant"], warm_weight=scalars["warm_weight"],
                   beta=scalars.get("beta", 1.0))
        mask.load_state_dict({**scalars, **tensors})
        return mask


def _data_parallel_world() -> int:
    """Processes training data-parallel (1 unless a process group is up, the cheap common case)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    return data_parallel_world()

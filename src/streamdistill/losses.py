"""Losses: in-batch InfoNCE, distillation MSE, the LEAF L2 loss, and the causal student's sum.

Every loss works on L2-normalised embeddings, the space in which embeddings are compared by
cosine similarity at evaluation time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    queries: torch.Tensor,
    docs: torch.Tensor,
    temperature: float = 0.02,
    false_negative_margin: float | None = None,
) -> torch.Tensor:
    """InfoNCE with in-batch negatives: row ``i``'s positive is ``docs[i]``.

    ``queries`` is (B, D); ``docs`` is (B + K, D), where any K extra rows (e.g. hard negatives)
    serve as further negatives for every query. Similarities are cosines divided by
    ``temperature`` and the loss is the mean cross-entropy of picking the positive.

    False-negative filter (optional): with in-batch negatives, another pair's document may well be
    relevant to query ``i`` too (AllNLI has many near-duplicate premises); pushing it away hurts.
    When ``false_negative_margin`` is set, negative ``j`` of query ``i`` is dropped from the
    softmax if ``s[i, j] > s[i, i] - margin``, i.e. if it is nearly as similar as (or more similar
    than) the positive — the filtering of GTE / gte-Qwen / Qwen3-Embedding style training.
    ``margin = 0`` drops negatives that beat the positive; Qwen3-Embedding's rule
    ``s[i, j] > s[i, i] + 0.1`` is ``margin = -0.1``; a positive margin is stricter. The positive
    itself is never dropped, and the threshold uses detached similarities (it is a selection).
    """
    if queries.ndim != 2 or docs.ndim != 2 or docs.shape[0] < queries.shape[0]:
        raise ValueError(
            f"info_nce expects queries (B, D) and docs (B + K, D); got {tuple(queries.shape)} and {tuple(docs.shape)}"
        )
    q = F.normalize(queries.float(), dim=-1)
    d = F.normalize(docs.float(), dim=-1)
    sim = q @ d.T  # (B, B + K) cosine similarities
    labels = torch.arange(q.shape[0], device=q.device)
    logits = sim / temperature
    if false_negative_margin is not None:
        s = sim.detach()
        positive = s[labels, labels].unsqueeze(1)
        drop = s > positive - false_negative_margin
        drop[labels, labels] = False
        logits = logits.masked_fill(drop, float("-inf"))
    return F.cross_entropy(logits, labels)


def distill_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``||e_S - e_T||^2`` between L2-normalised embeddings: summed over dims, mean over the batch.

    The teacher is a fixed target (its embeddings are cached), so it is detached. On unit vectors
    this equals ``2 - 2 cos(e_S, e_T)``.
    """
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    return (s - t).pow(2).sum(-1).mean()


def leaf_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """LEAF's loss ``||y - y_hat||^2`` (mean over the batch).

    ``y = Norm(student)`` is the student's normalised output (normalising again is harmless if the
    student head already ends in Norm); ``y_hat`` is the teacher's embedding *as given* — the
    teacher's own, already normalised output — so the student learns the teacher's space exactly.
    """
    y = F.normalize(student.float(), dim=-1)
    return (y - teacher.detach().float()).pow(2).sum(-1).mean()


def student_loss(
    q_s: torch.Tensor,
    d_s: torch.Tensor,
    q_t: torch.Tensor,
    d_t: torch.Tensor,
    temperature: float = 0.02,
    lam: float = 1.0,
    false_negative_margin: float | None = None,
    n_t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The causal student's loss: ``InfoNCE(q_s, d_s) + lam * MSE``, the MSE averaged over every
    text with a teacher target: ``(MSE(q_s, q_t) + MSE(d_s, d_t)) / 2`` for the B pairs, and with
    ``n_t`` (the teacher's embeddings of the K hard negatives after the positives in ``d_s``) the
    mean over all 2B + K texts.

    ``q_*``/``d_*`` are query and document embeddings of the student (S) and the cached teacher (T).
    ``d_s`` may carry K extra rows after its B positives (hard negatives for InfoNCE). Returns the
    loss and its parts as floats (``"infonce"``, ``"mse"``) for the training log.
    """
    contrastive = info_nce(q_s, d_s, temperature, false_negative_margin)
    if n_t is None:
        mse = 0.5 * (distill_mse(q_s, q_t) + distill_mse(d_s[: len(q_s)], d_t))
    else:
        if len(d_s) != len(q_s) + len(n_t):
            raise ValueError(f"{len(d_s) - len(q_s)} negatives in the batch, {len(n_t)} teacher targets for them")
        mse = distill_mse(torch.cat([q_s, d_s]), torch.cat([q_t, d_t, n_t]))
    loss = contrastive + lam * mse
    return loss, {"infonce": float(contrastive.detach()), "mse": float(mse.detach())}

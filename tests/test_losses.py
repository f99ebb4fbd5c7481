"""Losses on tiny hand-made inputs with known values."""

import math

import pytest
import torch
import torch.nn.functional as F

from streamdistill.losses import distill_mse, info_nce, leaf_l2, student_loss


def test_info_nce_one_hot_low_temperature_is_zero():
    e = torch.eye(4)
    assert info_nce(e, 3 * e, temperature=0.01).item() < 1e-30  # scale is irrelevant: normalised


def test_info_nce_known_value():
    # orthogonal unit rows: positive cosine 1, negatives 0 -> loss = log(1 + (B-1) e^{-1/t})
    e = torch.eye(3)
    t = 0.5
    expected = math.log(1 + 2 * math.exp(-1 / t))
    assert math.isclose(info_nce(e, e, temperature=t).item(), expected, rel_tol=1e-6)
    # identical queries for every row: every doc as likely -> log B
    same = torch.ones(3, 2)
    assert math.isclose(info_nce(same, same, temperature=0.02).item(), math.log(3), rel_tol=1e-6)


def test_info_nce_permutation_invariant():
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    perm = torch.randperm(6, generator=g)
    assert torch.allclose(info_nce(q, d, 0.1), info_nce(q[perm], d[perm], 0.1), atol=1e-6)


def test_info_nce_extra_docs_are_negatives():
    e = torch.eye(3)
    extra = torch.tensor([[1.0, 0.0, 0.0]])  # a hard negative identical to doc 0
    loss = info_nce(e, torch.cat([e, extra]), temperature=1.0)
    per_row = [math.log(1 + math.exp(-1) * 2 + math.exp(0)), math.log(1 + 3 * math.exp(-1)), math.log(1 + 3 * math.exp(-1))]
    assert math.isclose(loss.item(), sum(per_row) / 3, rel_tol=1e-6)
    with pytest.raises(ValueError):
        info_nce(torch.eye(3), torch.eye(2))


def test_false_negative_margin_removes_planted_duplicate():
    # doc 2 duplicates doc 0, so for query 0 it is a false negative as similar as the positive
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.2]])
    t = 0.05
    plain = info_nce(q, d, t)
    filtered = info_nce(q, d, t, false_negative_margin=0.05)
    assert filtered < plain
    # with the duplicate masked, query 0 sees only the orthogonal doc 1 as negative
    s = F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T
    rows = []
    for i, keep in enumerate([[0, 1], [0, 1, 2], [0, 1, 2]]):
        logits = s[i, keep] / t
        rows.append(torch.logsumexp(logits, 0) - s[i, i] / t)
    assert torch.allclose(filtered, torch.stack(rows).mean(), atol=1e-5)
    # gradient still flows
    qq = q.clone().requires_grad_()
    info_nce(qq, d, t, false_negative_margin=0.05).backward()
    assert torch.isfinite(qq.grad).all()


def test_distill_mse():
    a = torch.randn(4, 5)
    assert distill_mse(a, 2 * a).item() < 1e-12  # aligned after normalisation -> 0
    assert math.isclose(distill_mse(torch.eye(2), torch.eye(2).flip(0)).item(), 2.0, rel_tol=1e-6)
    # opposite unit vectors: ||u - (-u)||^2 = 4
    assert math.isclose(distill_mse(a, -a).item(), 4.0, rel_tol=1e-5)
    t = torch.randn(4, 5, requires_grad=True)
    distill_mse(a.requires_grad_(), t).backward()
    assert t.grad is None  # the teacher is a fixed target


def test_leaf_l2():
    teacher = F.normalize(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), dim=-1)
    assert leaf_l2(10 * teacher, teacher).item() < 1e-12
    # teacher taken as given: y = (1, 0) vs y_hat = (0, 2) -> 1 + 4 = 5
    assert math.isclose(leaf_l2(torch.tensor([[5.0, 0.0]]), torch.tensor([[0.0, 2.0]])).item(), 5.0, rel_tol=1e-6)


def test_student_loss_combines_parts():
    g = torch.Generator().manual_seed(1)
    q_s, d_s, q_t, d_t = (torch.randn(4, 6, generator=g) for _ in range(4))
    loss, parts = student_loss(q_s, d_s, q_t, d_t, temperature=0.1, lam=0.5)
    mse = (distill_mse(q_s, q_t) + distill_mse(d_s, d_t)) / 2
    assert math.isclose(parts["infonce"], info_nce(q_s, d_s, 0.1).item(), rel_tol=1e-6)
    assert math.isclose(parts["mse"], mse.item(), rel_tol=1e-6)
    assert math.isclose(loss.item(), parts["infonce"] + 0.5 * parts["mse"], rel_tol=1e-6)
    # student equal to the teacher: the MSE part vanishes
    _, parts = student_loss(q_t, d_t, q_t, d_t, temperature=0.1, lam=1.0)
    assert parts["mse"] < 1e-12


def test_the_students_mse_covers_the_negatives_when_they_have_targets():
    from streamdistill.losses import distill_mse, student_loss

    torch.manual_seed(0)
    q_s, d_s, q_t, d_t, n_t = (torch.randn(n, 8) for n in (4, 6, 4, 4, 2))
    _, parts = student_loss(q_s, d_s, q_t, d_t, lam=1.0)
    assert parts["mse"] == pytest.approx(0.5 * float(distill_mse(q_s, q_t) + distill_mse(d_s[:4], d_t)), rel=1e-6)
    _, with_negs = student_loss(q_s, d_s, q_t, d_t, lam=1.0, n_t=n_t)
    rows = [distill_mse(a[None], b[None]) for a, b in zip(torch.cat([q_s, d_s]), torch.cat([q_t, d_t, n_t]))]
    assert with_negs["mse"] == pytest.approx(float(sum(rows) / 10), rel=1e-6)
    with pytest.raises(ValueError, match="2 negatives in the batch, 3 teacher targets"):
        student_loss(q_s, d_s, q_t, d_t, n_t=torch.randn(3, 8))

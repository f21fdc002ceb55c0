"""MF-BPR: the BPR and L2 parts computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.models import MFBPR, build_model


def test_loss_parts_by_hand():
    model = build_model({"name": "mf_bpr", "dim": 2, "reg": 0.1}, 2, 3)
    assert isinstance(model, MFBPR)
    with torch.no_grad():
        model.user_emb.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.item_emb.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 0.0]]))
    batch = {"users": torch.tensor([0, 1]), "pos": torch.tensor([0, 1]), "neg": torch.tensor([1, 2])}
    total, parts = model.loss(batch)
    # user 0: pos score 1, neg score 0 -> softplus(-1); user 1: pos 2, neg 0 -> softplus(-2)
    bpr = (math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))) / 2
    # squared norms: users 1 + 1, pos 2 + 4, neg 4 + 9 = 21
    reg = 0.1 * 0.5 * 21 / 2
    assert parts["bpr"].item() == pytest.approx(bpr, rel=1e-6)
    assert parts["reg"].item() == pytest.approx(reg, rel=1e-6)
    assert total.item() == pytest.approx(bpr + reg, rel=1e-6)
    total.backward()
    assert model.user_emb.weight.grad.shape == (2, 2)


def test_embeddings_and_scorer():
    model = build_model("mf_bpr", 4, 5)
    users = torch.tensor([3, 0])
    scores = model.scorer()(users)
    assert scores.shape == (2, 5)
    torch.testing.assert_close(scores, model.user_emb.weight[users] @ model.item_emb.weight.T)
    assert model.query_embeddings(users).shape == (2, 64)
    assert model.item_embeddings().shape == (5, 64)
    assert "dim=64" in repr(model)


def test_item_embeddings_are_a_copy_a_caller_may_change():
    """The docstring's promise: normalising the returned table in place leaves the model's weights be."""
    model = build_model({"name": "mf_bpr", "dim": 4}, 3, 5)
    before = model.item_emb.all().detach().clone()
    model.item_embeddings().mul_(0.0)
    assert torch.equal(model.item_emb.all().detach(), before)

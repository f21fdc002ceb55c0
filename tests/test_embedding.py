"""IdEmbedding, the one table every id embedding goes through: its initialisations, checks and scale."""

from __future__ import annotations

import pytest


def test_id_embedding_draws_its_configured_initialisation():
    import math

    import torch

    from recsys.embedding import IdEmbedding

    torch.manual_seed(0)
    normal = IdEmbedding(4000, 50, init="normal", init_std=0.01)
    assert normal.weight.std().item() == pytest.approx(0.01, rel=0.05)
    bound = math.sqrt(6 / (4000 + 50))  # Glorot uniform: U(-bound, bound)
    uni = IdEmbedding(4000, 50, init="xavier_uniform").weight
    assert uni.abs().max().item() <= bound
    assert uni.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    nrm = IdEmbedding(4000, 50, init="xavier_normal").weight
    assert nrm.abs().max().item() > bound  # a normal's tails pass the uniform's bound
    assert nrm.std().item() == pytest.approx(math.sqrt(2 / (4000 + 50)), rel=0.05)


def test_id_embedding_refuses_an_empty_table():
    from recsys.embedding import IdEmbedding

    for num, dim in ((0, 4), (4, 0)):
        with pytest.raises(ValueError, match="num >= 1 and dim >= 1"):
            IdEmbedding(num, dim)


def test_a_scale_multiplies_lookups_and_the_whole_table():
    import torch

    from recsys.embedding import IdEmbedding

    emb = IdEmbedding(5, 3)
    emb.set_scale(lambda ids: (ids.float() + 1).unsqueeze(-1).expand(*ids.shape, 3))
    ids = torch.tensor([0, 2, 4])
    assert torch.allclose(emb(ids), emb.weight[ids] * torch.tensor([[1.0], [3.0], [5.0]]))
    assert torch.allclose(emb.all(), emb.weight * torch.arange(1, 6).float().unsqueeze(-1))

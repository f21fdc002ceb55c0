"""SASRec with its paper's binary per-position loss: the per-user sampler, the loss, and the held-out items.

What it shares with every next-item model (queries, reloading, exact resume, learning a pattern) is tested in
test_models_sasrec.py (``SEQUENCE_MODELS``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from features import DataConfig, prepare
from features.sequences import PAD, UserSequences, user_sequences
from recsys.models import REGISTRY, build_model
from recsys.models.sasrec_bce import SASRecBCE
from recsys.sequence_sampling import PositionSampler
from tests.test_models_sasrec import write_cyclic_sequences

SEQS = [[0, 1, 2, 3, 4, 5], [6], [7, 8], [], [9, 1, 9, 2]]


def sampler(max_len: int = 4, batch_size: int = 2, n_items: int = 12) -> PositionSampler:
    return PositionSampler(
        UserSequences.from_lists(SEQS), n_items, max_len=max_len, batch_size=batch_size,
        generator=torch.Generator(),
    )  # fmt: skip


def test_every_position_predicts_the_next_item_on_the_last_max_len_positions():
    s = sampler()
    assert s.users.tolist() == [0, 2, 4] and len(s) == 2  # users with < 2 items have no target
    assert s.inputs.tolist() == [[1, 2, 3, 4], [PAD, PAD, PAD, 7], [PAD, 9, 1, 9]]
    assert s.targets.tolist() == [[2, 3, 4, 5], [PAD, PAD, PAD, 8], [PAD, 1, 9, 2]]
    batches = list(s.iterate(generator=torch.Generator().manual_seed(0)))
    users = torch.cat([b["users"] for b in batches])
    assert sorted(users.tolist()) == [0, 2, 4]  # each user once per epoch
    for b in batches:
        rows = [s.users.tolist().index(u) for u in b["users"].tolist()]
        assert torch.equal(b["inputs"], s.inputs[rows]) and torch.equal(b["targets"], s.targets[rows])


def test_negatives_are_items_the_user_never_trained_on_drawn_uniformly():
    s = sampler(n_items=12)
    gen = torch.Generator().manual_seed(1)
    seen: dict[int, set[int]] = {0: set(), 2: set(), 4: set()}
    for _ in range(60):
        for b in s.iterate(generator=gen):
            has = b["targets"] != PAD
            assert torch.equal(b["negatives"] == PAD, ~has)  # a negative exactly where there is a target
            for u, negs in zip(b["users"].tolist(), b["negatives"].tolist(), strict=True):
                seen[u].update(n for n in negs if n != PAD)
    for u in seen:
        assert seen[u] == set(range(12)) - set(SEQS[u])  # all of them, and only them
    with pytest.raises(ValueError, match="no training samples"):
        PositionSampler(
            UserSequences.from_lists([[1], []]), 3, max_len=4, batch_size=2, generator=torch.Generator()
        )


def test_an_epoch_replays_exactly_from_any_batch():
    s = sampler(batch_size=1)
    full = list(s.iterate(generator=torch.Generator().manual_seed(5)))
    tail = list(s.iterate(start=2, generator=torch.Generator().manual_seed(5)))
    assert len(full) == 3 and len(tail) == 1
    assert all(torch.equal(full[2][k], tail[0][k]) for k in full[2])
    other = list(s.iterate(generator=torch.Generator().manual_seed(6)))
    assert any(not torch.equal(a["negatives"], b["negatives"]) for a, b in zip(full, other, strict=True))


def tiny() -> SASRecBCE:
    torch.manual_seed(0)
    model = build_model(
        {"name": "sasrec_bce", "dim": 8, "ffn_dim": 16, "max_len": 4, "dropout": 0.0, "attn_dropout": 0.0},
        5,
        12,
    )
    assert isinstance(model, SASRecBCE)
    return model


def test_the_loss_is_the_binary_cross_entropy_of_every_target_against_its_negative():
    model = tiny()
    batch = next(sampler(batch_size=3).iterate(generator=torch.Generator().manual_seed(2)))
    total, parts = model.loss(batch)
    # the reference's formula (ICLRec trainers.py, cross_entropy), position by position
    hidden = model.encoder(batch["inputs"])
    table = model.encoder.item_embeddings()
    terms = []
    for b in range(3):
        for t in range(4):
            target, negative = int(batch["targets"][b, t]), int(batch["negatives"][b, t])
            if target == PAD:
                continue
            pos, neg = hidden[b, t] @ table[target], hidden[b, t] @ table[negative]
            terms.append(-torch.log(torch.sigmoid(pos)) - torch.log(1 - torch.sigmoid(neg)))
    assert len(terms) == 8
    torch.testing.assert_close(total, torch.stack(terms).mean())
    assert set(parts) == {"bce"}
    # positions without a target do not count, whatever their negative says
    moved = {**batch, "negatives": batch["negatives"].where(batch["targets"] != PAD, 11)}
    torch.testing.assert_close(model.loss(moved)[0], total)


def test_samples_come_from_the_training_split_alone(tmp_path):
    """The last target of each user is their last training item: validation and test items are never
    targets, nor inputs; negatives avoid the training items only."""
    ds = prepare(
        DataConfig(source="amazon_seq", path=str(write_cyclic_sequences(tmp_path / "d", 30)), name="Cyc")
    )
    model = build_model({"name": "sasrec_bce", "dim": 8, "ffn_dim": 16, "max_len": 5}, ds.n_users, ds.n_items)
    model.prepare(ds.matrix("train"))
    model.prepare_dataset(ds)
    s = model.make_sampler(type("T", (), {"batch_size": 8}), torch.Generator())
    train = user_sequences(ds, ("train",))
    full = user_sequences(ds, ("train", "valid", "test"))
    for row, u in enumerate(s.users.tolist()):
        assert int(s.targets[row, -1]) == int(train[u][-1]) == int(full[u][-3])
        assert int(s.inputs[row, -1]) == int(train[u][-2])
    assert len(s.users) == ds.n_users
    assert REGISTRY["sasrec_bce"] is SASRecBCE
    assert np.all(train.lengths == full.lengths - 2)

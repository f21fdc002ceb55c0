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
    counts = {u: np.zeros(12, dtype=int) for u in (0, 2, 4)}
    for _ in range(300):
        for b in s.iterate(generator=gen):
            has = b["targets"] != PAD
            assert torch.equal(b["negatives"] == PAD, ~has)  # a negative exactly where there is a target
            for u, negs in zip(b["users"].tolist(), b["negatives"].tolist(), strict=True):
                np.add.at(counts[u], [n for n in negs if n != PAD], 1)
    for u, c in counts.items():
        allowed = sorted(set(range(12)) - set(SEQS[u]))
        assert np.flatnonzero(c).tolist() == allowed  # all of them, and only them
        # uniformly (Pearson's chi-square within 6 sd of its mean): a collision moved to the next free item,
        # say, would pile onto a few of them
        expected, dof = c.sum() / len(allowed), len(allowed) - 1
        chi2 = float(((c[allowed] - expected) ** 2).sum() / expected)
        assert chi2 < dof + 6 * np.sqrt(2 * dof), (u, c.tolist())
    with pytest.raises(ValueError, match="no training samples"):
        PositionSampler(
            UserSequences.from_lists([[1], []]), 3, max_len=4, batch_size=2, generator=torch.Generator()
        )


def random_sequences(n_users: int, n_items: int, max_length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_items, rng.integers(0, max_length + 1)).tolist() for _ in range(n_users)]


def test_an_epoch_replays_exactly_from_any_batch():
    s = sampler(batch_size=1)
    full = list(s.iterate(generator=torch.Generator().manual_seed(5)))
    tail = list(s.iterate(start=2, generator=torch.Generator().manual_seed(5)))
    assert len(full) == 3 and len(tail) == 1
    assert all(torch.equal(full[2][k], tail[0][k]) for k in full[2])
    other = list(s.iterate(generator=torch.Generator().manual_seed(6)))
    assert any(not torch.equal(a["negatives"], b["negatives"]) for a, b in zip(full, other, strict=True))
    # every start, on enough users that an order drawn from anything but the generator shows
    big = PositionSampler(
        UserSequences.from_lists(random_sequences(60, 30, 9, seed=0)), 30, max_len=5, batch_size=7,
        generator=torch.Generator(),
    )  # fmt: skip
    full = list(big.iterate(generator=torch.Generator().manual_seed(5)))
    for start in range(len(big) + 1):
        tail = list(big.iterate(start=start, generator=torch.Generator().manual_seed(5)))
        assert len(tail) == len(big) - start
        for a, b in zip(full[start:], tail, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a), start
    other = torch.cat([b["users"] for b in big.iterate(generator=torch.Generator().manual_seed(6))])
    assert not torch.equal(torch.cat([b["users"] for b in full]), other)


def test_examples_equal_the_reference_dataset_on_the_full_sequence():
    """ICLRec's ``RecWithContrastiveLearningDataset.__getitem__`` (train): input ``items[:-3]``, targets
    ``items[1:-2]`` of the whole sequence, left-padded with 0 and cut to the last ``max_seq_length``; here
    the training split is ``items[:-2]`` and PAD is -1 (the reference's ids are ours + 1)."""
    max_len = 6
    full = [s for s in random_sequences(80, 15, 14, seed=1) if len(s) >= 3]  # leave-one-out keeps 3+
    s = PositionSampler(
        UserSequences.from_lists([x[:-2] for x in full]), 15, max_len=max_len, batch_size=16,
        generator=torch.Generator(),
    )  # fmt: skip
    row = {u: r for r, u in enumerate(s.users.tolist())}
    for u, items in enumerate(full):
        ids = [i + 1 for i in items]
        input_ids, target_pos = ids[:-3], ids[1:-2]
        pad = max_len - len(input_ids)
        input_ids, target_pos = ([0] * pad + input_ids)[-max_len:], ([0] * pad + target_pos)[-max_len:]
        if not any(target_pos):  # nothing to learn from: the reference's row adds 0 to the loss
            assert u not in row
            continue
        assert (s.inputs[row[u]] + 1).tolist() == input_ids
        assert (s.targets[row[u]] + 1).tolist() == target_pos


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
    reference = torch.stack(terms).mean()
    torch.testing.assert_close(total, reference)
    assert set(parts) == {"bce"}
    # the same gradients: through the hidden states and both items' embeddings, negatives included
    grads = []
    for value in (total, reference):
        model.zero_grad()
        value.backward(retain_graph=True)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], msg=key)
    item_grad = grads[0]["encoder.item_emb.weight"]
    negatives_only = (
        set(batch["negatives"][batch["targets"] != PAD].tolist())
        - set(batch["targets"][batch["targets"] != PAD].tolist())
        - set(batch["inputs"][batch["inputs"] != PAD].tolist())
    )
    assert negatives_only and all(item_grad[i].abs().sum() > 0 for i in negatives_only)
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


def test_training_draws_dropout_and_inference_does_not():
    """The reference trains in ``model.train()`` mode: the loss sees the encoder's dropout."""
    torch.manual_seed(0)
    model = build_model({"name": "sasrec_bce", "dim": 8, "ffn_dim": 16, "max_len": 4}, 5, 12)  # dropout 0.5
    batch = next(sampler(batch_size=3).iterate(generator=torch.Generator().manual_seed(2)))
    model.train()
    assert not torch.equal(model.loss(batch)[0], model.loss(batch)[0])
    model.eval()
    assert torch.equal(model.loss(batch)[0], model.loss(batch)[0])

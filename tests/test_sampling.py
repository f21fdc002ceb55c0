"""BPRSampler: positives are training pairs, negatives never are, uniformity, determinism, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.sampling import BPRSampler


def dense_train(n_users=40, n_items=30, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.3
    dense[0, :] = True
    dense[0, 7] = False  # user 0 has exactly one negative: item 7
    dense[1, :] = False  # user 1 has no training item (never sampled in users mode)
    dense[2, :] = False
    dense[2, 4] = True  # user 2 has exactly one positive
    return dense


def make(mode, dense, batch_size=64, seed=0, **kw):
    return BPRSampler(
        sp.csr_matrix(dense.astype(np.float32)),
        mode=mode,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


@pytest.mark.parametrize("mode", ["interactions", "users"])
def test_positives_in_train_negatives_not(mode):
    dense = dense_train()
    sampler = make(mode, dense)
    seen = 0
    for batch in sampler:
        assert set(batch) == {"users", "pos", "neg"}
        assert all(t.dtype == torch.long for t in batch.values())
        u, p, n = (batch[k].numpy() for k in ("users", "pos", "neg"))
        assert dense[u, p].all()
        assert not dense[u, n].any()
        assert ((n >= 0) & (n < dense.shape[1])).all()
        seen += len(u)
        if mode == "users":
            assert len(u) == 64
    assert len(sampler) == (int(np.ceil(dense.sum() / 64)))
    assert seen == (dense.sum() if mode == "interactions" else len(sampler) * 64)


def test_interactions_epoch_is_a_permutation_of_all_pairs():
    dense = dense_train()
    sampler = make("interactions", dense, batch_size=50)
    batches = list(sampler)
    assert all(len(b["users"]) == 50 for b in batches[:-1])
    pairs = np.concatenate([b["users"].numpy() * 1000 + b["pos"].numpy() for b in batches])
    users, items = np.nonzero(dense)
    np.testing.assert_array_equal(np.sort(pairs), np.sort(users * 1000 + items))
    dropped = make("interactions", dense, batch_size=50, drop_last=True)
    assert len(dropped) == dense.sum() // 50 == len(list(dropped))


def test_users_mode_is_uniform_over_active_users():
    """Chi-square goodness of fit of user counts to the uniform law over users with >= 1 item (fixed seed)."""
    from scipy.stats import chisquare

    dense = dense_train()
    sampler = make("users", dense, batch_size=1000, seed=123, steps=20)
    users = np.concatenate([b["users"].numpy() for b in sampler])
    active = np.nonzero(dense.sum(1))[0]
    assert set(np.unique(users)) == set(active)  # user 1 never drawn
    counts = np.bincount(users, minlength=dense.shape[0])[active]
    assert chisquare(counts).pvalue > 0.01
    # positives of one user are uniform over her items too (user 0 has 29)
    sampler = make("users", dense[:1], batch_size=5800, seed=5, steps=1)
    pos = next(iter(sampler))["pos"].numpy()
    assert chisquare(np.bincount(pos, minlength=30)[np.nonzero(dense[0])[0]]).pvalue > 0.01


def test_negative_uniform_over_non_train_items():
    """Negatives of one user are uniform over the items she has not interacted with (rejection is exact)."""
    from scipy.stats import chisquare

    dense = np.zeros((1, 20), dtype=bool)
    dense[0, [0, 3, 4, 9, 15]] = True
    sampler = make("users", dense, batch_size=15000, seed=9, steps=1)
    neg = next(iter(sampler))["neg"].numpy()
    counts = np.bincount(neg, minlength=20)
    assert counts[dense[0]].sum() == 0
    assert chisquare(counts[~dense[0]]).pvalue > 0.01


def test_single_negative_user_gets_it():
    dense = dense_train()
    sampler = make("interactions", dense, batch_size=128)
    for batch in sampler:
        mask = batch["users"] == 0
        assert torch.all(batch["neg"][mask] == 7)


@pytest.mark.parametrize("mode", ["interactions", "users"])
def test_deterministic_and_resumable(mode):
    dense = dense_train()
    a = list(make(mode, dense, seed=7))
    b = list(make(mode, dense, seed=7))
    c = list(make(mode, dense, seed=8))
    for x, y in zip(a, b, strict=True):
        for k in x:
            assert torch.equal(x[k], y[k])
    assert not all(torch.equal(x["neg"], y["neg"]) for x, y in zip(a, c, strict=True))
    # iterate(start) reproduces the tail of the epoch without drawing the head
    resumed = list(make(mode, dense, seed=7).iterate(start=3))
    assert len(resumed) == len(a) - 3
    for x, y in zip(a[3:], resumed, strict=True):
        for k in x:
            assert torch.equal(x[k], y[k])
    # a generator passed per epoch overrides the sampler's own
    sampler = make(mode, dense, seed=0)
    again = list(sampler.iterate(generator=torch.Generator().manual_seed(7)))
    assert all(torch.equal(x["pos"], y["pos"]) for x, y in zip(a, again, strict=True))


def test_errors():
    dense = dense_train()
    with pytest.raises(ValueError, match="mode"):
        make("pairs", dense)
    with pytest.raises(ValueError, match="steps"):
        make("interactions", dense, steps=3)
    full = np.ones((2, 4), dtype=bool)
    with pytest.raises(ValueError, match="every item"):
        make("users", full)
    with pytest.raises(ValueError, match="no interactions"):
        make("users", np.zeros((2, 4), dtype=bool))
    assert "mode='users'" in repr(make("users", dense, steps=3))
    assert len(make("users", dense, steps=3)) == 3


def test_larger_matrix_one_epoch():
    """3 * 10^5 pairs in batches of 4096: a whole epoch is correct (and quick: no per-interaction Python)."""
    train = sp.random(10000, 3000, density=0.01, format="csr", random_state=np.random.default_rng(0))
    sampler = BPRSampler(
        train, mode="interactions", batch_size=4096, generator=torch.Generator().manual_seed(0)
    )
    dense = train.toarray() != 0
    n = 0
    for batch in sampler:
        u, p, neg = batch["users"].numpy(), batch["pos"].numpy(), batch["neg"].numpy()
        assert dense[u, p].all() and not dense[u, neg].any()
        n += u.size
    assert n == train.nnz

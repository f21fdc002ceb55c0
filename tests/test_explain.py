"""Intent explanations: structure of an explanation, and recovery of planted intents."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import normalized_mutual_info_score

from recsys.explain import dominant_intents, explain_user, format_explanation, intent_distributions
from recsys.models import DCCF, DCCFConfig, build_model
from recsys.sampling import BPRSampler


def planted(seed: int, n_users: int = 200, n_items: int = 160, groups: int = 4):
    """Users and items drawn from ``groups`` latent groups: a user takes each item of its own group with
    probability 0.25, any other item with probability 0.01."""
    rng = np.random.default_rng(seed)
    gu = rng.integers(0, groups, n_users)
    gi = np.arange(n_items) % groups
    dense = ((gu[:, None] == gi[None, :]) & (rng.random((n_users, n_items)) < 0.25)) | (
        rng.random((n_users, n_items)) < 0.01
    )
    return sp.csr_matrix(dense.astype(np.float32)), gu


def train_dccf(train: sp.csr_matrix, intents: int, seed: int, epochs: int) -> DCCF:
    torch.manual_seed(seed)
    model = DCCF(*train.shape, DCCFConfig(dim=16, intents=intents))
    model.prepare(train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sampler = BPRSampler(
        train, mode="users", batch_size=256, generator=torch.Generator().manual_seed(seed), steps=10
    )
    for _ in range(epochs):
        for batch in sampler:
            loss, _ = model.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def test_learned_intents_recover_planted_groups():
    """Each user's dominant intent agrees with its planted group far above chance (NMI 0.411 here; shuffled
    groups give 0.018), and far better than random prototypes of the learned norms on the same trained
    embeddings (0.046)."""
    train, groups = planted(seed=0)
    model = train_dccf(train, intents=4, seed=0, epochs=20)
    dominant = dominant_intents(model)
    nmi = normalized_mutual_info_score(groups, dominant)
    rng = np.random.default_rng(0)
    chance = np.mean([normalized_mutual_info_score(rng.permutation(groups), dominant) for _ in range(20)])
    assert nmi > 0.3
    assert chance < 0.03
    with torch.no_grad():
        learned = model.user_intent.clone()
        rand = torch.randn(learned.shape, generator=torch.Generator().manual_seed(1), dtype=learned.dtype)
        model.user_intent.copy_(rand / rand.norm(dim=0, keepdim=True) * learned.norm(dim=0, keepdim=True))
        random_nmi = normalized_mutual_info_score(groups, dominant_intents(model))
    assert nmi > random_nmi + 0.2


@pytest.fixture(scope="module")
def small_model():
    train, _ = planted(seed=3, n_users=40, n_items=30, groups=3)
    return train_dccf(train, intents=5, seed=3, epochs=2), train


def test_explanation_structure(small_model):
    model, train = small_model
    titles = [f"title {i}" for i in range(30)]
    exp = explain_user(
        model,
        7,
        train,
        item_ids=[f"i{i}" for i in range(30)],
        titles=titles,
        top_intents=3,
        items_per_intent=4,
        k=6,
    )
    assert exp.user_idx == 7 and exp.user_id == "7"
    assert len(exp.distribution) == 5 and sum(exp.distribution) == pytest.approx(1.0, abs=1e-6)
    weights = [d.weight for d in exp.top_intents]
    assert weights == sorted(weights, reverse=True) and weights[0] == pytest.approx(max(exp.distribution))
    seen = set(train[7].indices.tolist())
    recs = [r.item_idx for r in exp.recommendations]
    assert len(recs) == 6 and not seen & set(recs)
    users, items = model.embeddings()
    expected = (items @ users[7]).numpy()
    expected[list(seen)] = -np.inf
    assert recs == np.argsort(-expected, kind="stable")[:6].tolist()
    for d in exp.top_intents:
        assert len(d.aligned_items) == 4
        align = (items @ model.user_intent[:, d.intent]).detach().numpy()
        assert [x.item_idx for x in d.aligned_items] == np.argsort(-align, kind="stable")[:4].tolist()
        assert all(r in exp.recommendations for r in d.drives)
        assert d.aligned_items[0].title == titles[d.aligned_items[0].item_idx]
    # every recommendation is driven by exactly one intent (here: among all K, some may be outside the top 3):
    # the one with the largest p(k | u) * (c_k . e_i), p the user's layer-averaged intent weights
    driven = [r.item_idx for d in exp.top_intents for r in d.drives]
    assert len(driven) == len(set(driven))
    with torch.no_grad():
        p = intent_distributions(model)[0][7]
        expected_driver = {i: int(torch.argmax(p * (items[i] @ model.user_intent))) for i in recs}
    for d in exp.top_intents:
        assert {r.item_idx for r in d.drives} == {i for i, k in expected_driver.items() if k == d.intent}
    text = format_explanation(exp)
    assert "intent" in text and exp.top_intents[0].aligned_items[0].title in text
    users_p, items_p = intent_distributions(model)
    torch.testing.assert_close(users_p.sum(1), torch.ones(40))
    torch.testing.assert_close(items_p.sum(1), torch.ones(30))


def test_any_sparse_format_excludes_the_users_items(small_model):
    """The user's row was sliced out of indptr/indices as if CSR: a CSC matrix excluded other items, a COO
    matrix raised AttributeError."""
    model, train = small_model
    expected = explain_user(model, 7, train, k=6)
    for other in (train.tocsc(), train.tocoo(), sp.csr_array(train)):
        got = explain_user(model, 7, other, k=6)
        assert [r.item_idx for r in got.recommendations] == [r.item_idx for r in expected.recommendations]


def test_many_users_share_one_propagation(small_model, monkeypatch):
    """explain_user ran the full graph propagation twice per user (embeddings, then intent weights): 100x a
    batched computation for 1,000 users."""
    from recsys.explain import explain_users

    model, train = small_model
    users = [7, 0, 7, 19]
    user_emb, item_emb = model.embeddings()
    dist, _ = intent_distributions(model)
    expected = []  # computed here, user by user, from the model's own outputs
    for u in users:
        scores = (item_emb @ user_emb[u]).numpy()
        scores[train[u].indices] = -np.inf
        top = np.argsort(-dist[u].numpy(), kind="stable")[:2].tolist()
        expected.append((np.argsort(-scores, kind="stable")[:6].tolist(), dist[u].tolist(), top))
    real, calls = model.forward_views, []

    def counted():
        calls.append(1)
        return real()

    monkeypatch.setattr(model, "forward_views", counted)
    batched = explain_users(model, users, train, k=6, top_intents=2)
    got = [
        ([r.item_idx for r in e.recommendations], e.distribution, [d.intent for d in e.top_intents])
        for e in batched
    ]
    assert [g[0] for g in got] == [x[0] for x in expected] and [g[2] for g in got] == [x[2] for x in expected]
    for (_, distribution, _), (_, reference, _) in zip(got, expected, strict=True):
        assert distribution == pytest.approx(reference, abs=1e-6)
    assert len(calls) == 1
    for bad in (2.5, True):  # 2.5 was user 2, True user 1
        with pytest.raises(TypeError, match=f"user_idxs: user indices must be integers, got {bad}"):
            explain_users(model, [bad], train)
    calls.clear()
    explain_user(model, 7, train, k=6)
    assert len(calls) == 1


def test_models_without_intents_are_refused(small_model):
    _, train = small_model
    lightgcn = build_model({"name": "lightgcn", "dim": 4, "layers": 1}, 40, 30)
    lightgcn.prepare(train)
    with pytest.raises(ValueError, match="no latent intents"):
        explain_user(lightgcn, 0, train)
    no_disen = DCCF(40, 30, DCCFConfig(dim=4, intents=2, disentangle=False))
    no_disen.prepare(train)
    with pytest.raises(ValueError, match="no latent intents"):
        explain_user(no_disen, 0, train)


def test_argument_errors(small_model):
    model, train = small_model
    for kwargs in ({"top_intents": -1}, {"k": -1}, {"items_per_intent": 0}, {"k": True}):
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be a positive integer"):
            explain_user(model, 0, train, **kwargs)  # top_intents=-1 dropped an intent; k=-1 failed in topk
    with pytest.raises(ValueError, match=r"train has shape \(2, 3\), the model expects \(40, 30\)"):
        explain_user(model, 0, train[:2, :3])  # excluded nothing, without a word


def test_unknown_user_index(small_model):
    model, train = small_model
    with pytest.raises(KeyError, match="out of range"):
        explain_user(model, 40, train)


def test_equal_scores_are_explained_in_item_order_as_served():
    """Items with the same neighbours and the same initial vector have the same final embedding, so every
    user scores them equally; the served index and the evaluation rank such items by index, and so must the
    explanation (torch.topk, which explain used, promises no order among equal values)."""
    train, _ = planted(seed=5, n_users=40, n_items=30, groups=3)
    train = train.tolil()
    twins = [4, 11, 17, 23, 29]
    for item in twins[1:]:
        train[:, item] = train[:, twins[0]]
    train[2, twins] = 0  # user 2 has seen none of them
    train = train.tocsr()
    train.eliminate_zeros()
    torch.manual_seed(5)
    model = DCCF(*train.shape, DCCFConfig(dim=16, intents=5))
    model.prepare(train)
    with torch.no_grad():
        model.item_emb.weight[twins] = model.item_emb.weight[twins[0]].clone()
    _, item_emb = model.embeddings()
    # Sparse propagation may round a row 1 ulp apart depending on the CPU's kernels (seen on an AMD EPYC:
    # twins 11 and 23); what the test needs is several exact ties, not all five.
    assert sum(torch.equal(item_emb[i], item_emb[twins[0]]) for i in twins) >= 3
    exp = explain_user(model, 2, train, k=30 - len(train[2].indices), items_per_intent=30)  # every item

    def tie_orders(ranked) -> list[list[int]]:
        """Item indices of each run of equal scores, in the order given."""
        runs: dict[float, list[int]] = {}
        for r in ranked:
            runs.setdefault(r.score, []).append(r.item_idx)
        return [run for run in runs.values() if len(run) > 1]

    # the product may round the last rows' scores differently (BLAS tails); some twins tie exactly
    recs = tie_orders(exp.recommendations)
    assert max(len(set(run) & set(twins)) for run in recs) >= 2
    assert all(run == sorted(run) for run in recs)
    for detail in exp.top_intents:  # the items aligned with an intent tie the same way
        assert all(run == sorted(run) for run in tie_orders(detail.aligned_items))


def test_index_arguments_are_named_as_written(small_model):
    model, train = small_model
    with pytest.raises(KeyError, match=r"user_idx: user indices \[40\] out of range \[0, 40\)"):
        explain_user(model, 40, train)
    for bad in (torch.tensor(True), torch.tensor([3]), np.bool_(True)):  # tensor(True) was user 1
        with pytest.raises(TypeError, match="user_idx: user indices must be integers"):
            explain_user(model, bad, train)
    assert explain_user(model, torch.tensor(3), train) == explain_user(model, np.int64(3), train)


# E4: p(k|u) is the mean of softmax(E^(l) C_U) over the layers E^(0)..E^(L-1), not E^(1)..E^(L).
def test_intent_distribution_averages_the_layers_before_the_last():
    import numpy as np
    import scipy.sparse as sp
    import torch

    from recsys.explain import explain_user, intent_distributions
    from recsys.models import DCCF, DCCFConfig

    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((12, 10)) < 0.3).astype(np.float32))
    torch.manual_seed(0)
    model = DCCF(12, 10, DCCFConfig(dim=8, intents=3, layers=1))
    model.prepare(train)
    model.eval()
    with torch.no_grad():
        e0 = model.forward_views().layers[0]
        expected = model.intent_weights(e0[:12], "user")
    users, _ = intent_distributions(model)
    torch.testing.assert_close(users, expected)
    exp = explain_user(model, 4, train)
    np.testing.assert_allclose(exp.distribution, expected[4].numpy(), rtol=1e-5)


def test_counts_beyond_what_there_is_give_all_there_is(small_model):
    """More intents, aligned items or recommendations asked for than there are: all there are (every item
    not known to the user, each attributed to one intent), each intent with its own weight."""
    model, train = small_model
    exp = explain_user(model, 7, train, top_intents=50, items_per_intent=100, k=1000)
    unseen = sorted(set(range(30)) - set(train[7].indices.tolist()))
    assert sorted(r.item_idx for r in exp.recommendations) == unseen
    assert len(exp.top_intents) == 5
    assert sorted(r.item_idx for d in exp.top_intents for r in d.drives) == unseen
    for d in exp.top_intents:
        assert d.weight == exp.distribution[d.intent]
        assert sorted(x.item_idx for x in d.aligned_items) == list(range(30))
    full = explain_user(model, 7, sp.csr_matrix(np.ones((40, 30), dtype=np.float32)), k=5)
    assert full.recommendations == [] and all(d.drives == [] for d in full.top_intents)

"""Blocked full-ranking top-k: exactness against a naive reference (ties included), masking, block and tile
boundaries, the tie rule, NaN, threads, and ``evaluate_model``."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from eval import evaluate_model, full_ranking_topk, full_ranking_topk_embeddings, ranking_metrics
from eval.ranking import CHUNK, PRUNE_MIN_CHUNKS_PER_K, model_topk, topk
from recsys.models.base import ModelConfig, Recommender


def naive_topk(scores: np.ndarray, exclude: sp.csr_matrix | None, k: int) -> np.ndarray:
    """Reference: mask, then per row sort by (score desc, item asc); -inf items are never returned."""
    s = scores.astype(np.float64).copy()
    if exclude is not None:
        r, c = exclude.nonzero()
        s[r, c] = -np.inf
    out = np.full((s.shape[0], k), -1, dtype=np.int64)
    for u in range(s.shape[0]):
        order = np.lexsort((np.arange(s.shape[1]), -s[u]))[:k]
        order = order[s[u, order] > -np.inf]
        out[u, : order.size] = order
    return out


def random_exclude(rng, n_users, n_items, density, full_rows=()):
    m = sp.random(n_users, n_items, density=density, format="lil", random_state=rng)
    for u, n_left in full_rows:  # user u keeps only n_left items
        m[u, rng.permutation(n_items)[: n_items - n_left]] = 1.0
    return m.tocsr()


def tied_scores(rng, n_users, n_items, levels):
    """Scores with many ties: a few distinct levels, and a share of rows that are constant."""
    s = rng.integers(0, levels, size=(n_users, n_items)).astype(np.float32)
    s[rng.random(n_users) < 0.1] = 1.0
    return s


# ---------------------------------------------------------------------------------------------------------
# exactness
# ---------------------------------------------------------------------------------------------------------
CASES = [
    # (n_users, n_items, k, levels): pruned path (>= PRUNE_MIN_CHUNKS_PER_K * k chunks) and direct path
    (70, 12_000, 20, 10**9),
    (70, 12_000, 20, 7),
    (50, 3_000, 5, 3),
    (50, 9_001, 1, 50),
    (40, 700, 20, 4),  # too few chunks: direct selection
    (30, 5, 8, 2),  # k > n_items
]


@pytest.mark.parametrize("n_users,n_items,k,levels", CASES)
def test_score_fn_path_equals_naive_reference(n_users, n_items, k, levels):
    rng = np.random.default_rng(n_items + k)
    scores = tied_scores(rng, n_users, n_items, levels)
    exclude = random_exclude(rng, n_users, n_items, 0.05, full_rows=[(0, 0), (1, max(0, k - 3)), (2, k)])
    expected = naive_topk(scores, exclude, k)
    table = torch.from_numpy(scores)
    users = torch.arange(n_users)
    for block in (n_users, 17):  # U not a multiple of the block
        got = full_ranking_topk(lambda u: table[u], users, exclude, k, block_size=block)
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"block {block}")


@pytest.mark.parametrize("n_users,n_items,k,levels", CASES)
def test_embedding_path_equals_naive_reference(n_users, n_items, k, levels):
    rng = np.random.default_rng(n_items * k)
    # small integer embeddings: exact float products, many exact ties between items
    span = 1 if levels < 10 else 50
    query = torch.from_numpy(rng.integers(-span, span + 1, (n_users, 3)).astype(np.float32))
    items = torch.from_numpy(rng.integers(-span, span + 1, (n_items, 3)).astype(np.float32))
    exclude = random_exclude(rng, n_users, n_items, 0.05, full_rows=[(0, 0), (3, k // 2)])
    expected = naive_topk((query @ items.T).numpy(), exclude, k)
    for block, workers in ((None, None), (13, 1), (7, 3)):
        got = full_ranking_topk_embeddings(query, items, exclude, k, block_size=block, workers=workers)
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"block {block}, workers {workers}")


def test_pruned_path_is_exercised():
    """Guard: the large cases above really take the chunk-pruned path."""
    assert 12_000 // CHUNK >= PRUNE_MIN_CHUNKS_PER_K * 20
    assert 3_000 // CHUNK >= PRUNE_MIN_CHUNKS_PER_K * 5


def test_random_floats_match_plain_topk():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.standard_normal((300, 20_000)).astype(np.float32))
    got = full_ranking_topk(lambda u: scores[u], torch.arange(300), None, 20, block_size=128)
    assert torch.equal(got, torch.topk(scores, 20, dim=1).indices)  # no ties among random floats


# ---------------------------------------------------------------------------------------------------------
# tie rule, masking, edges
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_items", [50, 20_000])
def test_ties_rank_the_lower_item_first(n_items):
    scores = torch.zeros(2, n_items)
    scores[0, [n_items - 1, 7, 30, 3]] = 5.0  # four tied at the top, given out of order
    scores[1] = 1.0  # a constant row
    got = full_ranking_topk(lambda u: scores[u], torch.arange(2), None, 6)
    assert got[0].tolist() == [3, 7, 30, n_items - 1, 0, 1]
    assert got[1].tolist() == [0, 1, 2, 3, 4, 5]


def test_each_selection_path_keeps_the_tie_rule(monkeypatch):
    """Ties across the cut among the candidates, ties between chunk maxima, and the fast path."""
    import eval.ranking as ranking

    calls = []
    exact = ranking._exact_topk_positions
    monkeypatch.setattr(ranking, "_exact_topk_positions", lambda x, k: calls.append(x.shape) or exact(x, k))
    n_items = 20_000
    scores = torch.zeros(4, n_items)
    scores[0, [5, 6, 400]] = torch.tensor([10.0, 9.0, 9.0])  # chunk maxima 10, 9 distinct; 6 and 400 tie
    scores[1, [5, 200, 400]] = torch.tensor([10.0, 9.0, 9.0])  # chunks 1 and 3 tie at the cut
    scores[2, [5, 6, 400]] = torch.tensor([10.0, 9.0, 8.0])  # no tie: fast path
    scores[3, [300, 7]] = 3.0  # tied pair inside the top-k: ordered by item
    got = full_ranking_topk(lambda u: scores[u], torch.arange(4), None, 2, workers=1).tolist()
    assert got == [[5, 6], [5, 200], [5, 6], [7, 300]]
    widths = sorted(shape[1] for shape in calls)
    assert widths == [2 * CHUNK, n_items + (-n_items) % CHUNK]  # one candidate-level and one full-row redo


def test_one_user_per_block():
    rng = np.random.default_rng(5)
    scores = tied_scores(rng, 9, 4_000, 5)
    exclude = random_exclude(rng, 9, 4_000, 0.1)
    got = full_ranking_topk(lambda u: torch.from_numpy(scores)[u], torch.arange(9), exclude, 7, block_size=1)
    np.testing.assert_array_equal(got.numpy(), naive_topk(scores, exclude, 7))


def test_excluded_items_are_never_returned_and_rows_run_out():
    n_users, n_items, k = 6, 20_000, 20
    rng = np.random.default_rng(1)
    scores = torch.from_numpy(rng.standard_normal((n_users, n_items)).astype(np.float32))
    best = torch.topk(scores, 50, dim=1).indices.numpy()
    rows = np.repeat(np.arange(n_users), 50)
    exclude = sp.csr_matrix((np.ones(rows.size), (rows, best.ravel())), shape=(n_users, n_items)).tolil()
    exclude[5, :] = 1.0  # user 5: everything excluded
    exclude[4, 5:] = 1.0  # user 4: only items 0-4 left
    exclude = exclude.tocsr()
    got = full_ranking_topk(lambda u: scores[u], torch.arange(n_users), exclude, k).numpy()
    for u in range(4):
        assert not set(got[u]) & set(best[u])
        assert (got[u] >= 0).all()
    assert got[5].tolist() == [-1] * k
    assert sorted(got[4, :5].tolist()) == [0, 1, 2, 3, 4] and (got[4, 5:] == -1).all()


def test_users_index_exclude_rows_not_positions():
    scores = torch.arange(10, dtype=torch.float32).repeat(3, 1)  # item 9 best for everyone
    exclude = sp.csr_matrix(([1.0], ([7], [9])), shape=(8, 10))  # only user 7 has seen item 9
    got = full_ranking_topk(lambda u: scores[: len(u)], torch.tensor([7, 0, 3]), exclude, 2)
    assert got.tolist() == [[8, 7], [9, 8], [9, 8]]
    emb = full_ranking_topk_embeddings(
        torch.ones(3, 1),
        torch.arange(10, dtype=torch.float32)[:, None],
        exclude,
        2,
        users=np.array([7, 0, 3]),
    )
    assert emb.tolist() == got.tolist()


def test_model_scores_of_minus_inf_are_not_returned():
    scores = torch.full((1, 30_000), float("-inf"))
    scores[0, [4, 9]] = torch.tensor([1.0, 2.0])
    got = full_ranking_topk(lambda u: scores, torch.arange(1), None, 4)
    assert got.tolist() == [[9, 4, -1, -1]]


@pytest.mark.parametrize("n_items", [40, 20_000])
def test_nan_scores_raise(n_items):
    scores = torch.randn(3, n_items)
    scores[1, n_items // 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        full_ranking_topk(lambda u: scores[u], torch.arange(3), None, 5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_embeddings_are_named_as_such(bad):
    # there is no score function on this path: the error blamed one, for embeddings a model produced
    query, items = torch.randn(4, 8), torch.randn(50, 8)
    items[7, 3] = bad
    with pytest.raises(
        ValueError, match=r"the item embeddings hold NaN or infinite values \(1 row\(s\), first row 7"
    ):
        full_ranking_topk_embeddings(query, items, None, 5)
    items[7, 3] = 0.0
    query[2, 0] = bad
    with pytest.raises(ValueError, match=r"the query embeddings hold NaN or infinite values .* first row 2"):
        full_ranking_topk_embeddings(query, items, None, 5)


def test_score_fn_output_is_not_modified_and_threads_are_restored():
    cache = torch.randn(20, 3_000)
    before = cache.clone()
    exclude = sp.random(20, 3_000, density=0.1, format="csr", random_state=0)
    threads = torch.get_num_threads()
    full_ranking_topk(lambda u: cache[int(u[0]) : int(u[-1]) + 1], torch.arange(20), exclude, 5, 8, workers=2)
    assert torch.equal(cache, before)
    assert torch.get_num_threads() == threads


def test_parameters_with_grad_in_worker_threads():
    """Worker threads do not inherit no_grad: embeddings that require grad must still work."""
    query = torch.nn.Parameter(torch.randn(600, 4))
    items = torch.nn.Parameter(torch.randn(128 * 40, 4))  # a multiple of 128: no padding copy
    got = full_ranking_topk_embeddings(query, items, None, 3, block_size=50, workers=2)
    assert torch.equal(got, torch.topk(query.detach() @ items.detach().T, 3, dim=1).indices)


def test_argument_errors():
    users = torch.arange(3)
    with pytest.raises(ValueError, match="k must"):
        full_ranking_topk(lambda u: torch.zeros(len(u), 5), users, None, 0)
    with pytest.raises(ValueError, match="columns"):
        full_ranking_topk(lambda u: torch.zeros(len(u), 5), users, sp.csr_matrix((3, 6)), 2)
    with pytest.raises(ValueError, match="rows of exclude"):
        full_ranking_topk(lambda u: torch.zeros(len(u), 5), torch.tensor([0, 9]), sp.csr_matrix((3, 5)), 2)
    with pytest.raises(ValueError, match="shape"):
        full_ranking_topk(lambda u: torch.zeros(len(u) + 1, 5), users, None, 2)
    with pytest.raises(ValueError, match="agree"):
        full_ranking_topk_embeddings(torch.zeros(3, 4), torch.zeros(5, 2), None, 2)
    assert full_ranking_topk(lambda u: torch.zeros(len(u), 5), torch.arange(0), None, 3).shape == (0, 3)


def test_integer_scores_keep_their_order():
    # float32 holds integers exactly only up to 2**24: these last-seen timestamps would all tie
    scores = torch.tensor([[1_577_836_800, 1_577_836_801, 1_577_836_850, 5]])
    assert full_ranking_topk(lambda u: scores[u], torch.arange(1), None, 3).tolist() == [[2, 1, 0]]


# ---------------------------------------------------------------------------------------------------------
# evaluate_model
# ---------------------------------------------------------------------------------------------------------
class FixedEmbeddings(Recommender):
    """Inner-product model with given embeddings (keeps the base scorer)."""

    def __init__(self, query: torch.Tensor, items: torch.Tensor) -> None:
        super().__init__(query.shape[0], items.shape[0], ModelConfig(name="fixed"))
        self.q = torch.nn.Parameter(query.clone())
        self.i = torch.nn.Parameter(items.clone())

    def query_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        assert not self.training
        return self.q[users]

    def item_embeddings(self) -> torch.Tensor:
        return self.i


class FixedScorer(FixedEmbeddings):
    """Same scores through an overridden scorer (the generic path)."""

    def scorer(self):
        scores = self.q @ self.i.T
        return lambda users: scores[users]


class FakeDataset:
    def __init__(self, train, valid, test):
        self.n_users, self.n_items = train.shape
        self._m = {"train": train, "valid": valid, "test": test}

    def matrix(self, split):
        return self._m[split]


def test_evaluate_model_excludes_train_and_valid_and_restores_mode():
    # one user, scores item i = i: train holds 9, valid holds 8, so the test item 7 ranks first
    items = torch.arange(10, dtype=torch.float32)[:, None]
    m = lambda rows, cols: sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(2, 10))  # noqa: E731
    data = FakeDataset(train=m([0, 1], [9, 0]), valid=m([0], [8]), test=m([0], [7]))
    model = FixedEmbeddings(torch.ones(2, 1), items)
    model.train()
    test = evaluate_model(model, data, split="test", ks=(1,))
    assert model.training
    assert test["hit@1"] == 1.0 and test["recall@1"] == 1.0  # user 1 has no test item: not evaluated
    valid = evaluate_model(model, data, split="valid", ks=(1, 2))
    assert valid["hit@1"] == 1.0  # valid: only train excluded, item 8 ranks first
    with pytest.raises(ValueError, match="no user"):
        evaluate_model(model, FakeDataset(m([0], [1]), m([], []), m([], [])), split="test")
    # cut-offs: the same rule as ranking_metrics, not int() (2.9 was read as 2, True as 1)
    for bad in ([2.9], [True], ["3"], [0], [], 2.5):
        with pytest.raises(ValueError, match="cut-off|ks must"):
            evaluate_model(model, data, split="test", ks=bad)
    assert set(evaluate_model(model, data, split="test", ks=[1.0, np.int64(2), 2])) >= {"hit@1", "hit@2"}
    # the training split ranks with its own items excluded: every metric was 0, with no word
    for bad_split in ("train", "Test", None):
        with pytest.raises(ValueError, match="split must be 'valid' or 'test'"):
            evaluate_model(model, data, split=bad_split, ks=(1,))  # type: ignore[arg-type]


def test_evaluate_model_paths_agree_with_reference():
    rng = np.random.default_rng(3)
    n_users, n_items = 80, 6_000
    query = torch.from_numpy(rng.standard_normal((n_users, 8)).astype(np.float32))
    items = torch.from_numpy(rng.standard_normal((n_items, 8)).astype(np.float32))
    train = random_exclude(rng, n_users, n_items, 0.01)
    valid = random_exclude(rng, n_users, n_items, 0.002)
    test = sp.random(n_users, n_items, density=0.003, format="csr", random_state=4)
    test = sp.diags((np.arange(n_users) >= 5).astype(float)) @ test  # users 0-4: no test items
    test.eliminate_zeros()
    test = test.tocsr()
    data = FakeDataset(train, valid, test)
    ks = (5, 20)
    fast = evaluate_model(FixedEmbeddings(query, items), data, ks=ks, block_size=32)
    generic = evaluate_model(FixedScorer(query, items), data, ks=ks, block_size=32)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    ref_top = naive_topk((query @ items.T).numpy()[users], (train + valid).tocsr()[users], 20)
    reference = ranking_metrics(ref_top, test[users], ks, n_items=n_items)
    assert fast.keys() == reference.keys()
    for key in reference:
        assert fast[key] == pytest.approx(reference[key], abs=1e-12), key
        assert generic[key] == pytest.approx(reference[key], abs=1e-12), key
    subset = evaluate_model(FixedEmbeddings(query, items), data, ks=ks, users=np.arange(40))
    assert subset != fast


# ---------------------------------------------------------------------------------------------------------
# the ICLRec / ICSRec reference protocol: history scored 0, the zero padding row ranked
# ---------------------------------------------------------------------------------------------------------
def test_reference_protocol_by_hand():
    # one user, item scores [3, -1, 5, -2, 0.5]; train holds item 2 (score 5), test holds item 1 (score -1)
    items = torch.tensor([3.0, -1.0, 5.0, -2.0, 0.5])[:, None]
    m = lambda rows, cols: sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(1, 5))  # noqa: E731
    data = FakeDataset(train=m([0], [2]), valid=m([], []), test=m([0], [1]))
    for cls in (FixedEmbeddings, FixedScorer):
        model = cls(torch.ones(1, 1), items)
        # ours: item 2 removed -> 0 (3), 4 (0.5), 1 (-1), 3 (-2): the test item is third
        ours = evaluate_model(model, data, ks=(2, 3, 4))
        assert (ours["hit@2"], ours["hit@3"]) == (0.0, 1.0)
        # history scored 0: 0 (3), 4 (0.5), 2 (0), 1 (-1): fourth
        zero = evaluate_model(model, data, ks=(3, 4), excluded_score=0.0)
        assert (zero["hit@3"], zero["hit@4"]) == (0.0, 1.0)
        # plus one extra zero-score entry: 0, 4, 2, extra, 1: fifth, and the extra slot is no item
        topk, _, _ = model_topk(model, data, "test", 5, excluded_score=0.0, zero_score_items=1)
        assert topk.tolist() == [[0, 4, 2, -1, 1]]
        padded = evaluate_model(model, data, ks=(4, 5), excluded_score=0.0, zero_score_items=1)
        assert (padded["hit@4"], padded["hit@5"]) == (0.0, 1.0)
        # the extra entry alone (history removed): 0, 4, extra, 1
        pad_only = evaluate_model(model, data, ks=(3, 4), zero_score_items=1)
        assert (pad_only["hit@3"], pad_only["hit@4"]) == (0.0, 1.0)


@pytest.mark.parametrize("n_items", [6_000, 300])  # pruned and direct selection
@pytest.mark.parametrize("excluded_score", [0.0, 2.5])
def test_reference_protocol_matches_naive_reference(n_items, excluded_score):
    rng = np.random.default_rng(11)
    n_users, z, k = 60, 2, 20
    # scores shifted (a constant last coordinate) so that about 10 real items score above 0: known items at 0
    # or 2.5 and the extra zero-score entries then reach the top-k lists, where they must be placed exactly
    q, v = rng.standard_normal((n_users, 8)), rng.standard_normal((n_items, 8))
    shift = np.quantile(q @ v.T, 1 - 10 / n_items)  # about 10 real items per user score above 0
    query = torch.from_numpy(np.hstack([q, np.ones((n_users, 1))]).astype(np.float32))
    items = torch.from_numpy(np.hstack([v, np.full((n_items, 1), -shift)]).astype(np.float32))
    train = random_exclude(rng, n_users, n_items, 5 / n_items)  # about 6 known items per user
    valid = random_exclude(rng, n_users, n_items, 1 / n_items)
    test = sp.random(n_users, n_items, density=0.004, format="csr", random_state=5)
    test.data[:] = 1.0
    known_any = (train + valid).astype(bool).astype(np.float64)
    test = (test - test.multiply(known_any)).tocsr()  # truth never among the known items
    test.eliminate_zeros()
    data = FakeDataset(train, valid, test)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    scores = (query @ items.T).numpy()[users].astype(np.float64)
    r, c = (train + valid).tocsr()[users].nonzero()
    scores[r, c] = excluded_score  # the reference: rating_pred[history] = 0
    scores = np.hstack([scores, np.zeros((users.size, z))])  # z zero rows ranked with the items
    ref = naive_topk(scores, None, k)
    known = sp.csr_matrix((train + valid).tocsr()[users])
    rows, slots = np.nonzero((ref >= 0) & (ref < n_items))
    assert known[rows, ref[rows, slots]].sum() > 0  # known items in the lists
    assert (ref >= n_items).any()  # and extra entries
    ref[ref >= n_items] = -1
    reference = ranking_metrics(ref, test[users], (5, k), n_items=n_items)
    for cls in (FixedEmbeddings, FixedScorer):
        got_top, _, _ = model_topk(cls(query, items), data, "test", k, block_size=16, excluded_score=excluded_score,
                                   zero_score_items=z)  # fmt: skip
        np.testing.assert_array_equal(got_top.numpy(), ref, err_msg=cls.__name__)
        got = evaluate_model(cls(query, items), data, ks=(5, k), block_size=16, excluded_score=excluded_score,
                             zero_score_items=z)  # fmt: skip
        for key in reference:
            assert got[key] == pytest.approx(reference[key], abs=1e-12), (cls.__name__, key)
    ours = evaluate_model(FixedEmbeddings(query, items), data, ks=(5, k))
    assert ours["recall@20"] >= reference["recall@20"]  # the known items and zero rows only take slots


def test_extra_entries_when_k_exceeds_the_catalogue():
    # 3 items scoring [1, -1, 2], item 2 known: ours returns the two others; with the known item at 0 and
    # 2 extra zero entries, all five slots are taken and the extra ones read -1
    items = torch.tensor([1.0, -1.0, 2.0])[:, None]
    m = lambda rows, cols: sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(1, 3))  # noqa: E731
    data = FakeDataset(train=m([0], [2]), valid=m([], []), test=m([0], [1]))
    model = FixedEmbeddings(torch.ones(1, 1), items)
    assert model_topk(model, data, "test", 6)[0].tolist() == [[0, 1, -1, -1, -1, -1]]
    got = model_topk(model, data, "test", 6, excluded_score=0.0, zero_score_items=2)[0].tolist()
    assert got == [[0, 2, -1, -1, 1, -1]]


def test_reference_protocol_argument_errors():
    items = torch.ones(3, 1)
    m = sp.csr_matrix(np.array([[1.0, 0.0, 0.0]]))
    data = FakeDataset(m, sp.csr_matrix((1, 3)), sp.csr_matrix(np.array([[0.0, 1.0, 0.0]])))
    model = FixedEmbeddings(torch.ones(1, 1), items)
    with pytest.raises(ValueError, match="zero_score_items"):
        evaluate_model(model, data, zero_score_items=-1)
    with pytest.raises(ValueError, match="excluded_score"):
        evaluate_model(model, data, excluded_score=float("nan"))


def test_topk_orders_equal_scores_by_position():
    scores = torch.zeros(1000)
    scores[[900, 5, 400, 17]] = 1.0  # torch.topk returned them as 400, 17, 5 (any order is allowed)
    values, positions = topk(scores, 3)
    assert positions.tolist() == [5, 17, 400] and values.tolist() == [1.0, 1.0, 1.0]
    rows = torch.stack([scores, -scores])
    values, positions = topk(rows, 2)
    assert positions.tolist() == [[5, 17], [0, 1]] and values.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    distinct = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(topk(distinct, 7)[0], torch.topk(distinct, 7).values)
    assert torch.equal(topk(distinct, 7)[1], torch.topk(distinct, 7).indices)
    assert topk(scores, 0)[1].shape == (0,)
    for bad in (1001, -1, True, 2.0):  # True got past the range check and failed inside with an IndexError
        with pytest.raises(ValueError, match=rf"k must be an integer in \[0, 1000\].*got {bad}"):
            topk(scores, bad)
    scores[3] = float("nan")
    with pytest.raises(ValueError, match="topk: the scores hold NaN"):
        topk(scores, 3)


def test_numpy_scores_and_embeddings_are_accepted_and_other_types_named():
    """A score function returning NumPy, or NumPy embeddings, failed with AttributeErrors ('str' object has
    no attribute 'type', 'numpy.ndarray' object has no attribute 'detach')."""
    gen = torch.Generator().manual_seed(0)
    query, items = torch.randn(6, 4, generator=gen), torch.randn(30, 4, generator=gen)
    scores = query @ items.T
    expected = full_ranking_topk(lambda u: scores[u], torch.arange(6), None, 5)
    assert torch.equal(full_ranking_topk(lambda u: scores[u].numpy(), torch.arange(6), None, 5), expected)
    assert torch.equal(full_ranking_topk_embeddings(query.numpy(), items.numpy(), None, 5), expected)
    from eval.ranking import _with_zero_columns  # the reference protocol's extra zero entries, NumPy too

    padded = _with_zero_columns(lambda u: scores[u].numpy(), 2)(torch.arange(2))
    assert padded.shape == (2, 32) and torch.equal(padded[:, 30:], torch.zeros(2, 2))
    with pytest.raises(TypeError, match="score_fn must return a torch.Tensor .* got list"):
        full_ranking_topk(lambda u: scores[u].tolist(), torch.arange(6), None, 5)
    with pytest.raises(TypeError, match="query must be a torch.Tensor or NumPy array"):
        full_ranking_topk_embeddings(query.tolist(), items, None, 5)

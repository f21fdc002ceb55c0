"""EASE^R: B against the closed form in float64, its optimality conditions, a 2-item case by hand, the scorer
and its query contexts (RP3beta's too), and a trained run through the pipeline (evaluate --run gives the
logged test metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.models import EASE, build_model
from recsys.models.ease import ease_weights


def random_binary(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    x = sp.random(n_users, n_items, density=density, random_state=seed, format="csr", dtype=np.float32)
    x.data[:] = 1.0
    return x


def closed_form(x: np.ndarray, l2: float) -> np.ndarray:
    """Steck's equation 8 written out densely in float64."""
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


@pytest.mark.parametrize(
    "shape,density,l2", [((40, 6), 0.4, 1.0), ((300, 120), 0.05, 10.0), ((500, 2100), 0.01, 50.0)]
)
def test_weights_match_the_closed_form_in_float64(shape, density, l2):
    """2,100 items spans two blocks of X^T X rows and of the mirrored triangle."""
    x = random_binary(*shape, density, seed=shape[1])
    b = ease_weights(x, l2=l2)
    assert b.dtype == np.float32 and b.flags["C_CONTIGUOUS"] and b.shape == (shape[1], shape[1])
    ref = closed_form(x.toarray().astype(np.float64), l2)
    np.testing.assert_allclose(b, ref, rtol=0, atol=1e-5 * np.abs(ref).max())  # float32 against float64


def test_weights_satisfy_the_optimality_conditions():
    """The constrained least squares min ||X - XB||^2 + l2 ||B||^2 s.t. diag(B) = 0: B's diagonal is zero,
    and the gradient (X^T X + l2 I) B - X^T X is zero off the diagonal (the multipliers act on the diagonal
    only)."""
    x = random_binary(200, 30, 0.15, seed=3)
    b = ease_weights(x, l2=5.0).astype(np.float64)
    g = (x.T @ x).toarray().astype(np.float64)
    grad = (g + 5.0 * np.eye(30)) @ b - g
    assert np.all(np.diag(b) == 0)
    off = grad[~np.eye(30, dtype=bool)]
    assert np.abs(off).max() < 1e-4 * np.abs(g).max()
    assert np.abs(np.diag(grad)).min() > 1e-3  # the constraint binds: unconstrained, B would be ~ identity


def test_two_items_by_hand():
    """Two items: P = (G + l2 I)^-1 gives B[0, 1] = G01 / (G00 + l2) and B[1, 0] = G01 / (G11 + l2): the
    co-occurrence count over the predicting item's popularity plus lambda."""
    x = sp.csr_matrix(np.array([[1, 1], [1, 0], [1, 1], [0, 1], [1, 0]], np.float32))
    # G00 = 4 (item 0's users), G11 = 3, G01 = 2
    b = ease_weights(x, l2=2.0)
    np.testing.assert_allclose(b, [[0.0, 2 / (4 + 2)], [2 / (3 + 2), 0.0]], rtol=1e-6)


def test_scores_are_the_users_rows_times_b():
    r = np.array(
        [[1, 1, 0, 0, 1], [1, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], np.float32
    )
    model = build_model({"name": "ease", "l2": 0.5}, 5, 5)
    assert isinstance(model, EASE) and not model.trainable
    model.prepare(sp.csr_matrix(r))
    scores = model.scorer()(torch.tensor([2, 0, 4]))
    assert scores.dtype == torch.float32 and scores.shape == (3, 5)
    np.testing.assert_allclose(
        scores.numpy(), r[[2, 0, 4]] @ closed_form(r.astype(np.float64), 0.5), atol=1e-6
    )
    assert torch.all(scores[2] == 0)  # a user without training items scores nothing


@pytest.mark.parametrize("name", ["ease", "rp3beta"])
def test_similar_items_are_the_rows_of_the_item_item_matrix(name):
    """An item's neighbours are its row of M, largest first, equal weights by index, never itself."""
    r = random_binary(40, 12, 0.3, seed=5)
    model = build_model({"name": name}, 40, 12)
    model.prepare(r)
    m = model.item_item.toarray() if sp.issparse(model.item_item) else model.item_item
    scores, found = model.similar_items(np.array([3, 0, 3]), k=5)
    assert scores.shape == found.shape == (3, 5)
    for row, item in enumerate((3, 0, 3)):
        weights = m[item].astype(np.float64)
        order = [j for j in np.lexsort((np.arange(12), -weights)) if j != item][:5]
        assert found[row].tolist() == order
        np.testing.assert_allclose(scores[row], weights[order], rtol=1e-6)
    assert model.similar_items(np.array([1]), k=50)[1].shape == (1, 11)  # every other item, not more
    with pytest.raises(ValueError, match=r"item indices in \[0, 12\)"):
        model.similar_items(np.array([12]), k=3)
    for bad in (0, -2):  # a negative k sliced from the end: 9 neighbours for k = -2
        with pytest.raises(ValueError, match="k must be a positive integer"):
            model.similar_items(np.array([1]), k=bad)


class _Splits:
    """The part of a prepared dataset EASE reads: its shape and each split's binary matrix."""

    def __init__(self, **splits: np.ndarray) -> None:
        self.root = "tiny"
        self.n_users, self.n_items = next(iter(splits.values())).shape
        self._splits = {name: sp.csr_matrix(m.astype(np.float32)) for name, m in splits.items()}

    def matrix(self, split: str) -> sp.csr_matrix:
        return self._splits[split]


@pytest.mark.parametrize("name", ["ease", "rp3beta"])
def test_queries_are_the_history_before_the_evaluated_target(name):
    """The item-item matrix is fitted on the training split; a query reads the training items when validating,
    training and validation items when testing, every split when serving (outside any query context). RP3beta
    read the training items in every context until 2026-12-04 (a leave-one-out test lost the latest item)."""
    train = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 1]])
    valid = np.array([[0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
    test = np.array([[0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]])
    model = build_model({"name": name, "l2": 1.0} if name == "ease" else name, 4, 4)
    model.prepare(sp.csr_matrix(train.astype(np.float32)))
    users = torch.arange(4)
    before = model.scorer()(users).numpy()  # prepare alone: every context reads the training items
    model.prepare_dataset(_Splits(train=train, valid=valid, test=test))
    if name == "ease":
        b = closed_form(train.astype(np.float64), 1.0)
    else:
        b = model.similarity.toarray().astype(np.float64)
    assert np.abs(b).sum() > 0
    np.testing.assert_allclose(before, train @ b, atol=1e-6)
    for context, rows in [("valid", train), ("test", train + valid), ("all", train + valid + test)]:
        if context == "all":
            got = model.scorer()(users)
        else:
            with model.query_context(context):
                got = model.scorer()(users)
        np.testing.assert_allclose(got.numpy(), rows @ b, atol=1e-6, err_msg=context)
    with pytest.raises(ValueError, match="3 users x 4 items"):
        model.prepare_dataset(_Splits(train=train[:3], valid=valid[:3], test=test[:3]))


def test_ratings_and_duplicates_count_once():
    """EASE fits the binary matrix: rating values and a pair listed twice give the same B as ones."""
    rows, cols = np.array([0, 0, 1, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2, 2])
    binary = sp.csr_matrix((np.ones(6, np.float32), (rows[:6], cols[:6])), shape=(3, 3))
    valued = sp.csr_matrix((np.array([5, 1, 3, 1, 2, 4, 4], np.float32), (rows, cols)), shape=(3, 3))
    a, b = build_model("ease", 3, 3), build_model("ease", 3, 3)
    a.prepare(binary)
    b.prepare(valued)
    np.testing.assert_array_equal(b.weights, a.weights)
    np.testing.assert_array_equal(b.train_matrix.toarray(), binary.toarray())


def test_refusals():
    model = build_model("ease", 4, 3)
    with pytest.raises(RuntimeError, match="prepare"):
        model.scorer()
    with pytest.raises(ValueError, match=r"shape \(4, 5\)"):
        model.prepare(sp.csr_matrix((4, 5), dtype=np.float32))
    with pytest.raises(NotImplementedError, match="not an inner product"):
        model.query_embeddings(torch.tensor([0]))
    with pytest.raises(NotImplementedError, match="not an inner product"):
        model.item_embeddings()
    with pytest.raises(ValueError, match="l2"):
        build_model({"name": "ease", "l2": 0}, 4, 3)


def test_a_run_trains_and_evaluate_run_gives_its_test_metrics(tmp_path, capsys):
    """Through ``recsys train`` and ``recsys evaluate --run``: the run is logged, rebuilt from MLflow (B
    fitted again on the prepared training split) and scores exactly the test metrics it logged."""
    import json

    import yaml

    from recsys.cli import main
    from recsys.tracking import list_runs
    from tests.test_trainer import make_cfg, write_synthetic_interactions

    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=1)
    raw["model"] = {"name": "ease", "l2": 2.0}
    raw["tracking"] = {"experiment": "ease"}
    config = tmp_path / "ease.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(config)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    (listed,) = list_runs(None, limit=5)
    assert listed["run_id"] == run_id and listed["model"] == "ease"
    logged = listed["test"]
    assert "ndcg@10" in logged and all(0 <= v <= 1 for v in logged.values())
    assert main(["evaluate", "--run", run_id, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert {k: again[k] for k in logged} == logged

    # load_run (recsys.pipeline.prepare_model) gives the model each context's item sets: a model prepared on
    # the training matrix alone scores with the training items everywhere, and the two logged figures above
    # still agree, so they cannot tell
    from recsys.pipeline import load_run

    run = load_run(run_id)
    ds, model = run.dataset, run.model
    assert ds.matrix("valid").nnz and ds.matrix("test").nnz
    users = torch.arange(ds.n_users)
    b = model.weights.astype(np.float64)
    for context, splits in [
        ("valid", ("train",)),
        ("test", ("train", "valid")),
        (None, ("train", "valid", "test")),
    ]:
        rows = sum(ds.matrix(s) for s in splits).toarray() > 0
        if context is None:  # serving: outside any query context
            got = model.scorer()(users)
        else:
            with model.query_context(context):
                got = model.scorer()(users)
        np.testing.assert_allclose(got.numpy(), rows @ b, atol=1e-5, err_msg=str(context))


def test_index_refuses_an_item_item_run_before_fitting_it(tmp_path, capsys, monkeypatch):
    """`recsys index` fitted the model on load and only then found it has no index: 7 minutes and 6.7 GB for
    EASE on Gowalla before the refusal. (`recsys serve --run` serves such a run from its fitted model:
    tests/test_scorer_recommender.py.)"""
    import yaml

    import recsys.pipeline
    from recsys.cli import main
    from tests.test_trainer import make_cfg, write_synthetic_interactions

    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=1)
    raw["model"], raw["tracking"] = {"name": "ease", "l2": 2.0}, {"experiment": "ease"}
    config = tmp_path / "ease.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(config)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    prepared = []
    monkeypatch.setattr(recsys.pipeline, "prepare_model", lambda *a: prepared.append(a))
    assert main(["index", "--run", run_id]) == 2
    assert (
        "error: model 'ease' cannot be indexed: its scores are not inner products" in capsys.readouterr().err
    )
    assert prepared == []
    assert not (tmp_path / "recsys_home" / "indexes").exists()

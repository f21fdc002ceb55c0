"""SSL two-tower (Yao et al., CIKM 2021): masks, log-Q, the SSL sampler, cold items, learning, pipeline and
serving of new items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from scipy.stats import chisquare

from eval import evaluate_model
from eval.slices import evaluate_item_slices, slice_metrics
from features import DataConfig, prepare
from features.cold_items import choose_cold_items, item_slices
from features.new_items import encode_new_items
from recsys.config import ConfigError, validate_config
from recsys.feature_masking import (
    correlated_group,
    correlated_masks,
    independent_random_masks,
    random_complementary_masks,
    value_dropout,
)
from recsys.models import build_model
from recsys.models.two_tower import TwoTowerSampler

N_CATEGORIES = 5


def write_category_data(
    folder: Path, n_users: int = 60, n_items: int = 50, length: int = 8, seed: int = 0
) -> Path:
    """Amazon-style files where each user buys only items of one category (user u: category u % 5).

    Items: category ``i % 5`` (attribute 1..5) and a brand (attribute 6..15), so the category is visible in
    the item features; each user's sequence is ``length`` distinct items of the user's category."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    by_cat = {
        c: [i for i in range(1, n_items + 1) if (i - 1) % N_CATEGORIES == c] for c in range(N_CATEGORIES)
    }
    lines = []
    for u in range(1, n_users + 1):
        items = rng.choice(by_cat[u % N_CATEGORIES], size=length, replace=False)
        lines.append(" ".join(map(str, [u, *items])))
    (folder / "Cat.txt").write_text("\n".join(lines) + "\n")
    attrs = {str(i): [1 + (i - 1) % N_CATEGORIES, 6 + (i - 1) % 10] for i in range(1, n_items + 1)}
    (folder / "Cat_item2attributes.json").write_text(json.dumps(attrs))
    return folder


def cfg(path: Path, **model) -> dict:
    return {
        "name": "cat-two-tower",
        "seed": 1,
        "device": "cpu",
        "data": {"source": "amazon_seq", "path": str(path), "name": "Cat"},
        "model": {
            "name": "two_tower",
            "emb_dim": 8,
            "hidden": [32],
            "dim": 16,
            "history_len": 5,
            "ssl_weight": 0.3,
            "ssl_batch_size": 32,
            **model,
        },
        "train": {"epochs": 30, "batch_size": 64, "lr": 0.01, "progress": False, "num_threads": 1},
        "eval": {"ks": [10], "block_size": 64},
        "tracking": {"enabled": False},
    }


def prepared_model(path: Path, **model):
    ds = prepare(DataConfig(source="amazon_seq", path=str(path), name="Cat"))
    torch.manual_seed(0)
    m = build_model(cfg(path, **model)["model"], ds.n_users, ds.n_items)
    m.prepare(ds.matrix("train"))
    m.prepare_dataset(ds)
    return ds, m


# ---- masks ------------------------------------------------------------------------------------------------
def test_cfm_masks_are_complementary_and_follow_the_mi_ranking():
    mi = np.array(
        [
            [9.0, 0.1, 0.9, 0.3, 0.5],
            [0.1, 9.0, 0.2, 0.8, 0.0],
            [0.9, 0.2, 9.0, 0.4, 0.6],
            [0.3, 0.8, 0.4, 9.0, 0.7],
            [0.5, 0.0, 0.6, 0.7, 9.0],
        ]
    )
    # ceil(5 / 2) = 3 features masked together: the seed and its 2 most informative partners
    assert correlated_group(mi, 0) == [0, 2, 4]
    assert correlated_group(mi, 1) == [1, 3, 2]
    assert correlated_group(mi, 3) == [3, 1, 4]
    assert correlated_group(mi[:4, :4], 0) == [0, 2]  # F = 4: a group of 2
    gen = torch.Generator().manual_seed(0)
    seeds = []
    for _ in range(500):
        m1, m2, seed = correlated_masks(mi, 7, generator=gen)
        assert m1.shape == (7, 5) and bool((m1 ^ m2).all())  # disjoint and covering: complementary
        assert sorted(torch.nonzero(m1[0]).squeeze(1).tolist()) == sorted(correlated_group(mi, seed))
        assert bool((m1 == m1[0]).all())  # one seed per batch
        seeds.append(seed)
    assert chisquare(np.bincount(seeds, minlength=5)).pvalue > 0.01  # the seed is uniform


def test_random_masks_complementary_or_independent():
    gen = torch.Generator().manual_seed(0)
    m1, m2 = random_complementary_masks(200, 5, generator=gen)
    assert bool((m1 ^ m2).all()) and bool((m1.sum(1) == 3).all())
    assert m1.float().mean(0).min() > 0.45  # every feature lands in either view
    i1, i2 = independent_random_masks(200, 5, generator=gen)
    assert bool((i1.sum(1) == 3).all()) and bool((i2.sum(1) == 3).all())
    assert bool((i1 & i2).any(1).all())  # two halves of 3 of 5 always overlap: not complementary
    with pytest.raises(ValueError, match="at least 2 features"):
        random_complementary_masks(3, 1)


def test_value_dropout_keeps_padding_and_never_empties_a_row():
    codes = torch.tensor([[3, 4, 5, -1], [7, -1, -1, -1]] * 500)
    assert value_dropout(codes, 0.0) is codes
    out = value_dropout(codes, 0.3, generator=torch.Generator().manual_seed(0))
    assert bool((out[codes == -1] == -1).all())
    assert bool(((out != -1).sum(1) >= 1).all())
    kept = (out[0::2, :3] != -1).float().mean()
    assert abs(float(kept) - 0.7) < 0.03


# ---- log-Q ------------------------------------------------------------------------------------------------
def test_logq_shifts_each_items_logit_by_exactly_log_p(tmp_path):
    ds, model = prepared_model(write_category_data(tmp_path / "d"), logq="frequency")
    # p_j from the training targets, computed here independently: every training interaction after the
    # user's first one (in time order) is a target
    train = ds.train.sort("user_idx", "timestamp", maintain_order=True)
    targets = train.filter(pl.int_range(pl.len()).over("user_idx") > 0)["item_idx"].to_numpy()
    p = np.bincount(targets, minlength=ds.n_items) / targets.size
    batch = next(
        iter(model.make_sampler(type("T", (), {"batch_size": 16})(), torch.Generator().manual_seed(0)))
    )
    t = batch["targets"]
    q = model.query_tower(model.query_values(batch["users"], batch["inputs"]))
    v = model.item_tower(model.item_values(t))
    with_logq = model.main_logits(q, v, t)
    model.config = model.config.model_copy(update={"logq": "none"})
    without = model.main_logits(q, v, t)
    finite = torch.isfinite(without)
    assert bool((torch.isfinite(with_logq) == finite).all())
    shift = (with_logq - without)[finite]
    expected = (-torch.from_numpy(np.log(p[t.numpy()])).float()).expand_as(without)[finite]
    torch.testing.assert_close(shift, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(without.diagonal(), (q * v).sum(1) / model.config.temperature)


def test_ssl_loss_does_not_treat_a_repeated_item_as_a_negative(tmp_path):
    """The SSL batch is drawn with replacement: a row repeating item i is not a negative of i. With shared
    masks and no value dropout its second view equals the positive, so as a negative it kept that row's loss
    above log 2 and pushed the item away from itself."""
    _, model = prepared_model(
        write_category_data(tmp_path / "d"), masking="correlated", value_dropout=0.0, ssl_temperature=0.5
    )
    model.train()
    items = torch.tensor([3, 3, 5, 7, 3, 9])
    torch.manual_seed(1)
    loss = model.ssl_loss(items)
    torch.manual_seed(1)  # the same masks again, to compute the expected value by hand
    z1, z2 = (z.detach().numpy().astype(np.float64) for z in model.augmented_views(items))
    logits = z1 @ z2.T / 0.5
    assert np.allclose(z2[0], z2[1])  # a repeat's view is the positive itself
    expected = []
    for i, item in enumerate(items.tolist()):
        keep = [j for j, other in enumerate(items.tolist()) if j == i or other != item]
        expected.append(np.log(np.exp(logits[i, keep]).sum()) - logits[i, i])
    assert loss.item() == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_streaming_estimator_tracks_sampling_frequency():
    from recsys.models.two_tower import StreamingFrequency

    est = StreamingFrequency(4, alpha=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3000):  # item 0 in every batch, item 1 every other batch, items 2-3 every fourth
        step = int(est.step)
        items = [0] + ([1] if step % 2 == 0 else []) + ([2, 3] if step % 4 == 0 else [])
        est.update(torch.tensor(items)[torch.randperm(len(items), generator=gen)])
    p = est.log_probability(torch.arange(4)).exp()
    torch.testing.assert_close(p, torch.tensor([1.0, 0.5, 0.25, 0.25]), rtol=0.05, atol=0)


# ---- the SSL sampler --------------------------------------------------------------------------------------
def test_ssl_items_are_uniform_over_the_warm_catalogue_and_resume_exactly(tmp_path):
    ds, model = prepared_model(write_category_data(tmp_path / "d"), cold_item_fraction=0.2)
    cold = set(model.cold_items.tolist())
    assert len(cold) == 10
    sampler = model.make_sampler(type("T", (), {"batch_size": 16})(), torch.Generator().manual_seed(5))
    batches = list(sampler)
    ssl = torch.cat([b["ssl_items"] for b in batches]).numpy()
    counts = np.bincount(ssl, minlength=ds.n_items)
    assert not set(np.flatnonzero(counts)) & cold  # cold items are never drawn
    warm = np.array(sorted(set(range(ds.n_items)) - cold))
    assert chisquare(counts[warm]).pvalue > 0.01  # uniform over the warm items
    # exact replay from a batch index (the trainer's resume contract)
    again = TwoTowerSampler(
        model.train_samples,
        batch_size=16,
        ssl_batch_size=32,
        catalogue=model.ssl_catalogue,
        generator=torch.Generator().manual_seed(5),
    )
    tail = list(again.iterate(start=2))
    assert len(tail) == len(batches) - 2
    for a, b in zip(tail, batches[2:], strict=True):
        for key in a:
            assert torch.equal(a[key], b[key])


def test_ssl_sampler_uniform_over_many_draws():
    """A larger chi-square check: 100 items, 200 batches of 64 draws."""
    from features.sequences import UserSequences, dynamic_sliding_samples

    samples = dynamic_sliding_samples(UserSequences.from_lists([[0, 1, 2, 3]] * 50), max_len=3)
    s = TwoTowerSampler(
        samples,
        batch_size=1,
        ssl_batch_size=64,
        catalogue=torch.arange(100),
        generator=torch.Generator().manual_seed(0),
    )
    draws = torch.cat([b["ssl_items"] for b in s]).numpy()
    assert draws.size == len(s) * 64
    assert chisquare(np.bincount(draws, minlength=100)).pvalue > 0.01


# ---- cold items -------------------------------------------------------------------------------------------
def test_cold_items_are_held_out_and_embedded_from_features_alone(tmp_path):
    ds, model = prepared_model(write_category_data(tmp_path / "d"), cold_item_fraction=0.2, cold_item_seed=3)
    cold = model.cold_items
    np.testing.assert_array_equal(cold, choose_cold_items(ds.n_items, 0.2, 3))
    assert not np.isin(model.train_samples.targets, cold).any()
    for seqs in model.histories.values():
        assert not np.isin(seqs.items, cold).any()
    assert bool(model.untrained[torch.from_numpy(cold)].all())
    model.eval()
    emb = model.item_embeddings()
    # a cold item's embedding is the embedding of its features with the id masked, i.e. what a brand-new item
    # with the same features gets
    spec = ds.manifest["side_features"]["items"]
    feats = ds.items.filter(pl.col("item_idx").is_in(pl.Series(cold).implode())).sort("item_idx")
    new = model.embed_new_items(
        encode_new_items([{"attributes": a} for a in feats["attributes"].to_list()], spec)
    )
    torch.testing.assert_close(emb[torch.from_numpy(cold)], new)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(ds.n_items))


def test_cold_items_and_feature_arrays_refuse_inputs_they_would_silently_misread():
    from features.cold_items import item_counts
    from features.errors import DataValidationError
    from features.feature_arrays import FeatureField, feature_arrays

    assert [choose_cold_items(10, f, 0).size for f in (0.0, 0.34, 0.36)] == [0, 3, 4]  # round(fraction * n)
    with pytest.raises(ValueError, match="makes all 3 items cold"):
        choose_cold_items(3, 0.9, 0)
    with pytest.raises(ValueError, match="cold item indices must be in"):
        item_slices(np.array([5, 3, 1, 0]), cold=np.array([-1]))
    with pytest.raises(ValueError, match="cold must hold item indices, got a boolean mask"):
        item_slices(np.array([5, 3, 1, 0]), cold=np.array([False, False, True, True]))
    for share in (1.5, -0.1, float("nan"), True, "0.1"):  # 1.5 made every warm item head: no tail
        with pytest.raises(ValueError, match="head_fraction must be a share of the warm items in"):
            item_slices(np.array([5, 3, 1, 0]), cold=np.array([], dtype=np.int64), head_fraction=share)
    with pytest.raises(ValueError, match=r"item_idx must be in \[0, 4\)"):
        item_counts(pl.DataFrame({"item_idx": [0, 7]}), 4)
    genres = FeatureField(name="genres", kind="multi_code", cardinality=4)
    with pytest.raises(DataValidationError, match="each item_idx once"):
        feature_arrays(
            pl.DataFrame({"item_idx": [0, 1, 1], "genres": [[1], [2], [3]]}), [genres], "item_idx", 3
        )
    # a missing code inside a list is an unknown value, in its place
    arrays = feature_arrays(
        pl.DataFrame({"item_idx": [0, 1, 2], "genres": [[1, None, 2], [3], []]}), [genres], "item_idx", 3
    )
    np.testing.assert_array_equal(arrays.values["genres"], [[1, 0, 2], [3, -1, -1], [0, -1, -1]])


def test_item_slices_partition_the_catalogue_and_restrict_truth():
    counts = np.array([50, 0, 7, 9, 1, 3, 30, 2, 2, 4])
    s = item_slices(counts, cold=np.array([1, 6]), head_fraction=0.25)
    assert s["head"].nonzero()[0].tolist() == [0, 3]  # ceil(0.25 * 8 warm) = 2 most frequent warm items
    assert s["cold"].nonzero()[0].tolist() == [1, 6]
    assert (s["head"].astype(int) + s["tail"] + s["cold"] == 1).all()
    import scipy.sparse as sp

    topk = np.array([[0, 2, 1], [3, 4, 5]])
    truth = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0, 0, 1]]))
    out = slice_metrics(topk, truth, s, ks=(1, 3))
    assert out["head/users"] == 1 and out["head/recall@1"] == 1.0
    assert out["cold/users"] == 2 and out["cold/recall@3"] == 0.5  # user 0 finds item 1 at rank 3, user 1 not
    assert out["tail/users"] == 1 and out["tail/recall@3"] == 0.0
    # a slice without any user's truth: its user count, and no metric (not NaN)
    empty = slice_metrics(topk, truth, {"none": np.zeros(10, dtype=bool)}, ks=(1,), metrics=("recall", "hit"))
    assert empty == {"none/users": 0.0}
    with pytest.raises(ValueError, match=r"slice 'short' has shape \(9,\), expected \(10,\) items"):
        slice_metrics(topk, truth, {"short": np.ones(9, dtype=bool)}, ks=(1,))


# ---- learning, pipeline, serving --------------------------------------------------------------------------
def test_training_learns_user_categories_and_retrieves_cold_items(tmp_path):
    from recsys.pipeline import train_experiment

    raw = cfg(write_category_data(tmp_path / "d"), masking="correlated", cold_item_fraction=0.2)
    result = train_experiment(validate_config(raw), echo=lambda *_: None)
    losses = [h["train/main"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0]
    # chance hit@10 is about 10 / 44; a user's category has 10 items, ~6 already seen
    assert result.test_metrics["hit@10"] > 0.7, result.test_metrics
    model, ds = result.model, result.dataset
    slices = item_slices(model.train_item_counts, model.cold_items)
    out = evaluate_item_slices(model, ds, slices, ks=(10,))
    assert out["all/recall@10"] == pytest.approx(result.test_metrics["recall@10"])
    assert out["cold/users"] >= 5  # users whose test item was held out of training
    assert out["cold/recall@10"] > 0.5, out  # found from the category attribute alone
    with pytest.raises(ValueError, match="may not be named 'all'"):  # it replaced the overall numbers
        evaluate_item_slices(model, ds, {"all": slices["head"]}, ks=(10,))


def test_pipeline_trains_indexes_and_serves_a_new_item(tmp_path):
    from recsys.pipeline import build_run_index, load_run, train_experiment
    from serving import Retriever, add_items

    raw = cfg(write_category_data(tmp_path / "d"), masking="random")
    raw["train"]["epochs"] = 15
    raw["tracking"] = {"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = train_experiment(validate_config(raw), echo=lambda *_: None)
    run = load_run(result.run_id, uri=raw["tracking"]["uri"])
    assert evaluate_model(run.model, run.dataset, split="test", ks=(10,)) == pytest.approx(
        result.test_metrics
    )
    folder = build_run_index(run, tmp_path / "index")
    retriever = Retriever.load(folder, num_threads=1)
    assert retriever.index.normalized  # cosine scores: unit vectors, normalised index
    user = run.dataset.user_vocab["user_id"][0]
    recs = retriever.recommend([user], k=5)[0]
    assert len(recs) == 5 and all(abs(r.score) <= 1.0 + 1e-5 for r in recs)  # cosine scores

    # a brand-new item of category 1 (attribute 2) and a new brand: embedded from its features, added to the
    # served index without retraining
    spec = run.dataset.manifest["side_features"]["items"]
    vec = run.model.embed_new_items(encode_new_items([{"attributes": [2, 99]}], spec)).numpy()
    with pytest.raises(TypeError, match=r"columns \['attributes'\] hold text.*encode_new_items"):
        run.model.embed_new_items(pl.DataFrame({"attributes": [["2", "99"]]}))  # a Polars cast error before
    with pytest.raises(TypeError, match="hold text"):
        run.model.embed_new_items(
            pl.DataFrame({"attributes": [["2"]]}, schema={"attributes": pl.List(pl.Categorical)})
        )
    add_items(folder, vec, ["new-item"], item_titles=["New"])
    served = Retriever.load(folder)
    assert served.index.n_items == run.dataset.n_items + 1
    assert served.recommend_for_vector(vec, k=1)[0][0].item_id == "new-item"
    neighbours = [r.item_id for r in served.similar_items("new-item", k=5)[0]]
    same_category = [i for i in neighbours if (int(i) - 1) % N_CATEGORIES == 1]
    assert len(same_category) >= 3, neighbours
    assert served.recommend([user], k=5)[0]  # users and their seen items survive the addition
    with pytest.raises(ValueError, match="already in the index"):
        add_items(folder, vec, ["new-item"])
    with pytest.raises(ValueError, match=r"shape \[n, 16\]"):
        add_items(folder, np.zeros((1, 3), dtype=np.float32), ["x"])


def test_config_errors_name_the_key(tmp_path):
    raw = cfg(tmp_path)
    raw["model"]["masking"] = "sideways"
    with pytest.raises(ConfigError, match="model.masking"):
        validate_config(raw)
    raw["model"]["masking"] = "correlated"
    raw["model"]["tau"] = 0.1
    with pytest.raises(ConfigError, match="model.tau: unknown key"):
        validate_config(raw)


def test_ssl_without_anything_to_tell_the_views_apart_is_refused(tmp_path):
    """masking none and no value dropout: both SSL views would be the same item, a contrastive term that
    learns nothing; the error names the keys that would make it learn."""
    path = write_category_data(tmp_path / "d")
    with pytest.raises(
        ValueError, match=r"masking=none needs value dropout \(model.value_dropout > 0, now 0.0\)"
    ):
        prepared_model(path, masking="none", value_dropout=0.0)
    _, model = prepared_model(path, masking="none", value_dropout=0.3)  # dropout on the attribute lists
    model.train()
    z1, z2 = model.augmented_views(torch.arange(1, 9))
    assert not torch.equal(z1, z2)


def test_correlated_views_without_the_mutual_information_name_the_cause(tmp_path):
    """With the SSL term off, prepare_dataset computes no mutual information; correlated views asked for then
    (augmented_views is public) used to fail with a bare IndexError inside the masking."""
    _, model = prepared_model(write_category_data(tmp_path / "d"), masking="correlated", ssl_weight=0.0)
    assert model.mutual_information is None
    with pytest.raises(RuntimeError, match=r"mutual information.*model.ssl_weight > 0"):
        model.augmented_views(torch.arange(1, 9))


def test_new_item_features_are_encoded_with_the_dataset_codes():
    spec = {
        "genres": {"kind": "multi_code", "cardinality": 4, "labels": ["Action", "Comedy", "Drama"]},
        "year_bucket": {"kind": "code", "cardinality": 3, "labels": ["1980s", "1990s"]},
        "release_year": {"kind": "int"},
    }
    out = encode_new_items(
        [{"genres": ["Drama", "Opera"], "year_bucket": "1990s", "release_year": 1997}, {}], spec
    )
    assert out.to_dicts() == [
        {"genres": [3, 0], "year_bucket": 2, "release_year": 1997},
        {"genres": [], "year_bucket": 0, "release_year": None},
    ]
    with pytest.raises(KeyError, match="'colour'"):
        encode_new_items([{"colour": "red"}], spec)
    with pytest.raises(TypeError, match="give a list"):
        encode_new_items([{"genres": "Drama"}], spec)
    with pytest.raises(TypeError, match="'year_bucket' is single-valued; give one label, not \\['1990s'\\]"):
        encode_new_items([{"year_bucket": ["1990s"]}], spec)  # it was coded as unknown without a word
    # no item of the dataset had a year: an empty codebook, so any year bucket is unknown (code 0)
    empty = {**spec, "year_bucket": {"kind": "code", "cardinality": 1, "labels": []}}
    assert encode_new_items([{"year_bucket": "1990s"}], empty)["year_bucket"].to_list() == [0]
    with pytest.raises(
        ValueError, match="new item 0, feature 'release_year': expected an integer, got 'soon'"
    ):
        encode_new_items([{"release_year": "soon"}], spec)
    for bad in (1997.9, True, float("nan"), np.float32(1997.9), np.bool_(True)):  # 1997.9 was 1997, True 1
        with pytest.raises(ValueError, match="expected an integer"):
            encode_new_items([{"release_year": bad}], spec)
    with pytest.raises(TypeError, match="feature 'genres' is multi-valued; give a list, not 5"):
        encode_new_items([{"genres": 5}], spec)
    # a derived feature left out is derived from its source, as the pipeline does (it used to be unknown)
    assert encode_new_items([{"release_year": 1995.0}], spec)["year_bucket"].to_list() == [2]
    assert encode_new_items([{"release_year": 1975}], spec)["year_bucket"].to_list() == [0]
    # a derived feature given is kept, even where its source says otherwise
    given = encode_new_items([{"year_bucket": "1980s", "release_year": 1997}], spec)
    assert given["year_bucket"].to_list() == [1]


def test_sparse_attribute_ids_get_dense_codes(tmp_path):
    """Attribute ids were embedding rows as they are: one id of 10**12 asked for a 32 TB table."""
    folder = write_category_data(tmp_path / "d")
    attrs = json.loads((folder / "Cat_item2attributes.json").read_text())
    sparse = {item: [a if a <= 5 else a * 10**11 for a in values] for item, values in attrs.items()}
    (folder / "Cat_item2attributes.json").write_text(json.dumps(sparse))
    ds, model = prepared_model(folder)
    spec = ds.manifest["side_features"]["items"]["attributes"]
    ids = sorted({a for values in sparse.values() for a in values})
    assert spec["cardinality"] == len(ids) + 1 == 16 and spec["labels"] == [str(i) for i in ids]
    row = ds.items.filter(pl.col("item_idx") == 0)["attributes"].to_list()[0]
    first_item = ds.item_vocab.filter(pl.col("item_idx") == 0)["item_id"].item()
    assert [spec["labels"][code - 1] for code in row] == [str(a) for a in sparse[first_item]]
    new = encode_new_items([{"attributes": sparse[first_item]}], {"attributes": spec})
    assert new["attributes"].to_list() == [row]  # a new item is coded as the catalogue's items are
    as_numbers = encode_new_items(
        [{"attributes": [float(a) for a in sparse[first_item]]}], {"attributes": spec}
    )
    assert as_numbers["attributes"].to_list() == [row]  # 6e11 as a float is the id 600000000000, not unknown
    with pytest.raises(ValueError, match="expected an integer, got True"):  # as compact ids refuse it
        encode_new_items([{"attributes": [True]}], {"attributes": spec})
    assert max(p.shape[0] for p in model.item_tower.parameters()) < 100  # no table of 10**12 rows
    # compact ids (the benchmark files': 1..n) are still used as they are, so their datasets are unchanged
    plain, _ = prepared_model(write_category_data(tmp_path / "plain"))
    assert plain.manifest["side_features"]["items"]["attributes"] == {
        "kind": "multi_code",
        "cardinality": 16,
        "labels": None,
    }


def test_new_items_of_a_dataset_without_item_features_are_refused(tmp_path):
    """Without item features a new item has nothing to be embedded from: three rows used to become a frame of
    none (encode_new_items) and a polars ShapeError (embed_new_items)."""
    folder = write_category_data(tmp_path / "d")
    (folder / "Cat_item2attributes.json").unlink()
    ds, model = prepared_model(folder, ssl_weight=0.0)
    spec = ds.manifest["side_features"].get("items", {})
    assert spec == {}
    with pytest.raises(ValueError, match="the dataset has no item side features"):
        encode_new_items([{}, {}, {}], spec)
    assert encode_new_items([], spec).height == 0
    with pytest.raises(ValueError, match="this model has no item side features"):
        model.embed_new_items(pl.DataFrame({"x": [1, 2, 3]}))


def test_side_feature_codes_ignore_surrounding_spaces():
    from features.side_features import codebook, encode

    values = pl.Series([" M", "F ", "M"])
    labels = codebook(values)
    codes = pl.DataFrame({"g": values}).select(encode(pl.col("g"), labels))["g"].to_list()
    assert labels == ["F", "M"] and codes == [2, 1, 2]


def test_train_fraction_keeps_a_seeded_share_of_the_samples(tmp_path):
    path = write_category_data(tmp_path / "d")
    _, full = prepared_model(path)
    _, half = prepared_model(path, train_fraction=0.5)
    assert len(half.train_samples) == round(0.5 * len(full.train_samples))
    assert set(half.train_samples.ends.tolist()) <= set(full.train_samples.ends.tolist())
    assert half.histories["test"].items.size == full.histories["test"].items.size  # queries unchanged


def test_streaming_frequency_first_update_by_hand():
    """The gap estimate moves by alpha towards the observed gap (Yi et al. 2019): an item seen at step 1
    after an initial gap of I = 4 has 0.9 * 4 + 0.1 * (1 - 0) = 3.7; unseen items keep 4. (A periodic stream
    converges to the same value whichever weight is alpha; one step does not.)"""
    from recsys.models.two_tower import StreamingFrequency

    est = StreamingFrequency(4, alpha=0.1)
    est.update(torch.tensor([0]))
    torch.testing.assert_close(est.gap, torch.tensor([3.7, 4, 4, 4], dtype=torch.float64))


def test_the_head_slice_is_the_most_frequent_warm_items_ties_by_lower_index():
    counts = np.array([3, 7, 5, 7, 5, 5, 0, 1])
    none = np.array([], dtype=np.int64)
    for dtype in (np.int64, np.uint32, np.uint64, np.float64):  # unsigned counts were negated around
        head = item_slices(counts.astype(dtype), cold=none, head_fraction=0.5)["head"]
        assert head.nonzero()[0].tolist() == [1, 2, 3, 4], dtype  # 7, 7, then the first two of the three 5s
    s = item_slices(counts, cold=np.array([1]), head_fraction=0.25)  # 7 warm items: ceil(1.75) = 2
    assert s["head"].nonzero()[0].tolist() == [2, 3] and s["tail"].nonzero()[0].tolist() == [0, 4, 5, 6, 7]
    tiny = item_slices(counts, cold=none, head_fraction=0.0)  # ceil(0) = 0, but at least one head item
    assert tiny["head"].nonzero()[0].tolist() == [1]


def test_the_head_slice_rounds_its_share_up():
    s = item_slices(np.arange(10, 0, -1), cold=np.array([], dtype=np.int64), head_fraction=0.25)
    assert s["head"].nonzero()[0].tolist() == [0, 1, 2]  # ceil(0.25 * 10) = 3 most popular items
    # the share as written: 0.07 * 100 is 7.000000000000001 in floating point, whose ceiling is 8
    for share in (0.07, np.float32(0.07)):
        assert item_slices(np.arange(100, 0, -1), np.array([], dtype=np.int64), share)["head"].sum() == 7
    assert item_slices(np.arange(200, 0, -1), np.array([], dtype=np.int64), 0.035)["head"].sum() == 7


def test_age_buckets_at_their_boundaries():
    from features.side_features import movielens_user_features

    users = pl.DataFrame(
        {"user_id": ["a", "b", "c", "d"], "age": [17, 18, 24, 56], "gender": ["M"] * 4,
         "occupation": ["x"] * 4, "zip_code": ["12345"] * 4}
    )  # fmt: skip
    vocab = pl.DataFrame({"user_idx": [0, 1, 2, 3], "user_id": ["a", "b", "c", "d"]})
    table, spec = movielens_user_features(users, vocab)
    labels = spec["age_bucket"]["labels"]
    assert [labels[c - 1] for c in table["age_bucket"]] == ["<18", "18-24", "18-24", "56+"]


def test_new_items_code_out_of_range_ids_as_unknown_and_strip_labels():
    """An attribute code equal to the cardinality has no row in the table (unknown, 0); " Drama " is
    Drama."""
    spec = {
        "attributes": {"kind": "multi_code", "cardinality": 3, "labels": None},
        "genres": {"kind": "multi_code", "cardinality": 4, "labels": ["Action", "Comedy", "Drama"]},
    }
    out = encode_new_items([{"attributes": [2, 3], "genres": [" Drama "]}], spec)
    assert out["attributes"].to_list() == [[2, 0]]
    assert out["genres"].to_list() == [[3]]


def test_zip_prefixes_ignore_letter_case():
    """A Canadian code in lower case is the same region as in upper case (ML-100K has none in lower case)."""
    from features.side_features import movielens_user_features

    users = pl.DataFrame(
        {"user_id": ["a", "b"], "age": [30, 30], "gender": ["M", "F"], "occupation": ["x", "x"],
         "zip_code": ["T8H1X", "t8h1x"]}
    )  # fmt: skip
    table, _ = movielens_user_features(users, pl.DataFrame({"user_idx": [0, 1], "user_id": ["a", "b"]}))
    assert table["zip1"][0] == table["zip1"][1] and table["zip3"][0] == table["zip3"][1]


# ---- blind spots of a mutation run: pooling, the main task's negatives, SSL views, spread-out, histories ----
def test_multi_valued_features_are_mean_pooled_over_their_real_values():
    """A multi-valued feature is the mean of its values' embeddings; the padding (-1) takes no part (it is
    looked up as code 0 and must be zeroed out before the sum and left out of the count)."""
    from features.feature_arrays import FeatureField
    from recsys.models.two_tower import FeatureTower

    torch.manual_seed(0)
    tower = FeatureTower([FeatureField("genres", "multi_code", 4)], emb_dim=3, hidden=[], out_dim=2)
    table = tower.tables["genres"].weight.detach()
    codes = torch.tensor([[1, 3, -1], [2, -1, -1], [0, 2, 3]])
    got = tower.field_vectors({"genres": codes}).detach()
    assert got.shape == (3, 1, 3)
    torch.testing.assert_close(got[0, 0], (table[1] + table[3]) / 2)
    torch.testing.assert_close(got[1, 0], table[2])
    torch.testing.assert_close(got[2, 0], (table[0] + table[2] + table[3]) / 3)


def test_main_task_does_not_treat_a_repeated_target_as_a_negative(tmp_path):
    """In-batch softmax: rows 0 and 1 share their target item, so neither is a negative of the other (the
    module docstring); had it been, each row's loss would count its own item in its denominator twice."""
    _, model = prepared_model(write_category_data(tmp_path / "d"), ssl_weight=0.0, logq="frequency")
    model.train()
    batch = {
        "users": torch.tensor([0, 1, 2, 3]),
        "inputs": torch.tensor([[-1, -1, -1, 4, 9], [-1, -1, -1, -1, 2], [-1, 1, 6, 11, 16], [-1] * 5]),
        "targets": torch.tensor([3, 3, 5, 8]),
    }
    _, parts = model.loss(batch)
    q = model.query_tower(model.query_values(batch["users"], batch["inputs"])).detach().double()
    v = model.item_tower(model.item_values(batch["targets"])).detach().double()
    t = batch["targets"].tolist()
    logits = (q @ v.T / model.config.temperature - model.log_freq[batch["targets"]].double()).numpy()
    expected = []
    for i, item in enumerate(t):
        keep = [j for j, other in enumerate(t) if j == i or other != item]
        expected.append(np.log(np.exp(logits[i, keep]).sum()) - logits[i, i])
    assert parts["main"].item() == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_the_two_ssl_views_are_the_item_under_two_complementary_masks(tmp_path):
    """RFM: each item's first view masks a random half of its features and the second view the other half
    (Yao et al., Section 3.2); the views differ, so the contrast is not of an item with itself."""
    _, model = prepared_model(write_category_data(tmp_path / "d"), masking="random", value_dropout=0.0)
    model.train()
    items = torch.tensor([0, 4, 9, 13, 21])
    torch.manual_seed(3)
    z1, z2 = model.augmented_views(items)
    torch.manual_seed(3)  # the same masks again (drawn first, from the global generator)
    m1, m2 = random_complementary_masks(len(items), model.item_tower.n_features)
    assert bool((m1 ^ m2).all())
    values = model.item_values(items)
    torch.testing.assert_close(z1, model.item_tower(values, m1))
    torch.testing.assert_close(z2, model.item_tower(values, m2))
    assert not torch.allclose(z1, z2)


def test_spread_out_by_hand():
    """Zhang et al. (ICCV 2017): M1^2 + max(0, M2 - 1/d) over the pairs of different items. Unit vectors
    (1, 0), (0.6, 0.8), (-1, 0) of three items: inner products 0.6, -1, -0.6, so M1 = -1/3, M2 = 1.72/3 and
    the loss is 1/9 + 1.72/3 - 1/2. With rows 0 and 2 the same item their pair is left out: M1 = 0,
    M2 = 0.36 < 1/2, and the loss is 0."""
    from recsys.models.two_tower import spread_out_loss

    v = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]], dtype=torch.float64)
    assert spread_out_loss(v, torch.tensor([1, 2, 3])).item() == pytest.approx(1 / 9 + 1.72 / 3 - 0.5)
    assert spread_out_loss(v, torch.tensor([1, 2, 1])).item() == pytest.approx(0.0, abs=1e-12)


def test_a_history_of_item_0_is_not_an_empty_history(tmp_path):
    """The history field codes item i as i + 1 and keeps 0 for an empty history: a user whose only earlier
    item is item 0 gets another query than a user without any."""
    from recsys.models.two_tower import HISTORY

    _, model = prepared_model(write_category_data(tmp_path / "d"))
    history = torch.tensor([[-1, -1, -1, -1, 0], [-1, -1, -1, -1, -1], [-1, -1, -1, 7, 0]])
    values = model.query_values(torch.tensor([0, 0, 0]), history)
    assert values[HISTORY].tolist() == [[-1, -1, -1, -1, 1], [-1, -1, -1, -1, 0], [-1, -1, -1, 8, 1]]
    q = model.query_tower(values)
    assert not torch.allclose(q[0], q[1])


def test_feature_dropout_masks_only_while_training(tmp_path):
    """The feature-dropout baseline masks item features in the training loss only; in eval mode the loss is
    the unmasked one (and does not change from call to call)."""
    _, model = prepared_model(write_category_data(tmp_path / "d"), ssl_weight=0.0, feature_dropout=0.5)
    batch = {
        "users": torch.tensor([0, 1, 2]),
        "inputs": torch.tensor([[-1, -1, -1, 4, 9], [-1, -1, -1, -1, 2], [-1, 1, 6, 11, 16]]),
        "targets": torch.tensor([3, 7, 5]),
    }
    model.eval()
    torch.manual_seed(0)
    _, parts = model.loss(batch)
    q = model.query_tower(model.query_values(batch["users"], batch["inputs"]))
    v = model.item_tower(model.item_values(batch["targets"]))
    unmasked = torch.nn.functional.cross_entropy(model.main_logits(q, v, batch["targets"]), torch.arange(3))
    torch.testing.assert_close(parts["main"], unmasked)


def test_streaming_logq_is_learned_from_the_training_batches_and_subtracted(tmp_path):
    """With ``logq: streaming`` a training step records its targets in the estimator (Yi et al. 2019,
    Algorithm 2: gap <- (1 - a) gap + a (t - last), from the initial gap I) and the main logits subtract
    log p_j = -log gap_j; an eval-mode loss records nothing."""
    _, model = prepared_model(write_category_data(tmp_path / "d"), ssl_weight=0.0, logq="streaming")
    n, a = model.n_items, model.config.streaming_alpha
    batch = {
        "users": torch.tensor([0, 1, 2, 3]),
        "inputs": torch.tensor([[-1, -1, -1, 4, 9], [-1, -1, -1, -1, 2], [-1, 1, 6, 11, 16], [-1] * 5]),
        "targets": torch.tensor([3, 5, 8, 3]),
    }
    model.train()
    model.loss(batch)
    model.eval()
    model.loss(batch)
    gap = torch.full((n,), float(n), dtype=torch.float64)
    gap[[3, 5, 8]] = (1 - a) * n + a * 1.0  # seen once, at step 1 (item 3 twice in the batch counts once)
    assert int(model.streaming.step) == 1
    torch.testing.assert_close(model.streaming.gap, gap)
    targets = torch.tensor([3, 7, 8])
    q = torch.nn.functional.normalize(torch.randn(3, model.config.dim), dim=1)
    v = torch.nn.functional.normalize(torch.randn(3, model.config.dim), dim=1)
    with_logq = model.main_logits(q, v, targets)
    model.config = model.config.model_copy(update={"logq": "none"})
    shift = with_logq - model.main_logits(q, v, targets)
    torch.testing.assert_close(shift, gap[targets].log().float().expand(3, 3), rtol=0, atol=1e-5)


# ---- blind spots of a second mutation run: independent masks, untrained items, cold items' MI, numbers ----
def test_masks_without_complementary_views_are_two_independent_draws():
    """RFM without complementary views draws each view's half on its own: the two masks of a row differ
    for some rows (two copies of one draw passed the size and overlap checks above), and over many rows a
    feature masked in view 1 is masked in view 2 about as often as a half would be, ceil(F/2)/F."""
    gen = torch.Generator().manual_seed(0)
    m1, m2 = independent_random_masks(4000, 4, generator=gen)
    assert bool((m1 != m2).any(1).any())
    both = (m1 & m2).sum().item() / m1.sum().item()
    assert abs(both - 0.5) < 0.03


def test_only_items_never_a_training_target_are_embedded_without_their_id(tmp_path):
    """``untrained`` (the id masked at scoring) is exactly the items without a training sample: an item that
    is a target once has a trained id row and keeps it."""
    ds, model = prepared_model(write_category_data(tmp_path / "d"), train_fraction=0.1)
    counts = np.bincount(model.train_samples.targets, minlength=ds.n_items)
    assert (counts == 0).any() and (counts == 1).any()
    np.testing.assert_array_equal(model.untrained.numpy(), counts == 0)
    model.eval()
    emb = model.item_embeddings()
    once = torch.from_numpy(np.flatnonzero(counts == 1))
    torch.testing.assert_close(emb[once], model.item_tower(model.item_values(once)))


def test_the_mutual_information_of_cfm_is_measured_over_the_warm_items_only(tmp_path):
    """Cold items are held out of everything the model learns from, the MI included (docs/two_tower.md)."""
    from features.mutual_info import mutual_information_matrix

    ds, model = prepared_model(
        write_category_data(tmp_path / "d"), masking="correlated", cold_item_fraction=0.3, cold_item_seed=1
    )
    names = [f.name for f in model.item_tower.fields]
    warm = ds.items.filter(~pl.col("item_idx").is_in(pl.Series(model.cold_items).implode()))
    np.testing.assert_allclose(model.mutual_information, mutual_information_matrix(warm, names))
    assert not np.allclose(model.mutual_information, mutual_information_matrix(ds.items, names))


def test_numeric_features_are_standardised_by_the_training_table():
    """An ``int`` feature is a dense field standardised with the mean and standard deviation of the table it
    was fitted on (missing -> 0, the mean); rows encoded later (new items) reuse those, not their own."""
    from features.feature_arrays import feature_arrays, fields_from_spec

    table = pl.DataFrame({"item_idx": [0, 1, 2, 3], "release_year": [1990, 1994, None, 1998]})
    fields = fields_from_spec(table, {"release_year": {"kind": "int"}}, "item_idx", 5)
    year = fields[1]
    assert (year.kind, year.mean, year.std) == ("dense", 1994.0, pytest.approx(np.std([1990, 1994, 1998])))
    out = feature_arrays(table, fields, "item_idx", 5).values["release_year"]
    assert out.dtype == np.float32
    s = np.std([1990, 1994, 1998])
    np.testing.assert_allclose(out, [-4 / s, 0.0, 0.0, 4 / s, 0.0], rtol=1e-6)  # item 4 has no row
    new = pl.DataFrame({"item_idx": [0, 1], "release_year": [2002, 2002]})
    np.testing.assert_allclose(feature_arrays(new, fields, "item_idx", 2).values["release_year"], [8 / s] * 2)

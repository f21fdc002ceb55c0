"""ICSRec: the two intent contrastive losses and their false-negative masks on hand-computed cases, the
cross-subsequence positives (the reference's fixed choice also on real Beauty), the sampler, warm-started CPU
k-means, ablations, learning, exact resume, serving by item sequence and the intent view."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from features.sequences import UserSequences, dynamic_sliding_samples
from recsys.config import validate_config
from recsys.contrastive import paired_info_nce
from recsys.models import REGISTRY, build_model
from recsys.models.icsrec import (
    CrossSubsequences,
    CrossSubsequenceSampler,
    ICSRec,
    kmeans,
    nearest_intents,
)
from recsys.sequence_sampling import SequenceSampler
from tests.test_features_sequences import golden_beauty_path, prepared_beauty_samples, read_golden_lines
from tests.test_models_sasrec import write_cyclic_sequences

E = math.e


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- the masked, paired InfoNCE ---------------------------------------------------------------------------
A = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
B = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])


def test_paired_info_nce_without_mask_by_hand():
    # rows z0..z5 = a0 a1 a2 b0 b1 b2; partners 0-3, 1-4, 2-5; negatives: all rows but itself and its partner
    rows = [
        math.log(2 * E + 3) - 1,  # z0: pos z0.z3 = 1; negs z1, z2, z4, z5 = 0, 1, 0, 0
        math.log(2 * E + 3) - 1,  # z1: pos z1.z4 = 1; negs z0, z2, z3, z5 = 0, 1, 0, 0
        math.log(1 + 4 * E),  # z2: pos z2.z5 = 0; negs z0, z1, z3, z4 = 1, 1, 1, 1
        math.log(2 * E + 3) - 1,  # z3
        math.log(2 * E + 3) - 1,  # z4
        math.log(5),  # z5: pos 0; negs all 0
    ]
    assert float(paired_info_nce(A, B)) == pytest.approx(sum(rows) / 6, rel=1e-6)


def test_paired_info_nce_false_negative_mask_by_hand():
    # pairs 0 and 1 share label 7: for their rows only the rows of pair 2 (z2, z5) remain negatives
    rows = [
        math.log(2 * E + 1) - 1,  # z0: pos 1; negs z2, z5 = 1, 0
        math.log(2 * E + 1) - 1,  # z1: pos 1; negs z2, z5 = 1, 0
        math.log(1 + 4 * E),  # z2: pos 0; negs z0, z1, z3, z4 = 1, 1, 1, 1
        math.log(2 * E + 1) - 1,  # z3
        math.log(2 * E + 1) - 1,  # z4
        math.log(5),  # z5
    ]
    got = paired_info_nce(A, B, torch.tensor([7, 7, 9]))
    assert float(got) == pytest.approx(sum(rows) / 6, rel=1e-6)
    # all pairs distinct: the mask removes exactly the anchor and its partner, as without labels
    torch.testing.assert_close(paired_info_nce(A, B, torch.tensor([1, 2, 3])), paired_info_nce(A, B))
    # one class only: no negatives left, every row contributes 0
    assert float(paired_info_nce(A, B, torch.tensor([4, 4, 4]))) == pytest.approx(0.0, abs=1e-7)
    # temperature divides every similarity
    r2 = math.sqrt(2.0)
    torch.testing.assert_close(paired_info_nce(A, B, temperature=0.5), paired_info_nce(r2 * A, r2 * B))


def test_paired_info_nce_gradients_and_errors():
    a, b = A.clone().requires_grad_(), B.clone().requires_grad_()
    paired_info_nce(a, b, torch.tensor([7, 7, 9])).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    with pytest.raises(ValueError, match="equal shape"):
        paired_info_nce(A, B[:2])
    with pytest.raises(ValueError, match="labels"):
        paired_info_nce(A, B, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="temperature"):
        paired_info_nce(A, B, temperature=0.0)


# ---- the model's two losses -------------------------------------------------------------------------------
def tiny(n_users: int = 4, n_items: int = 12, **cfg) -> ICSRec:
    torch.manual_seed(0)
    model = build_model(
        {"name": "icsrec", "dim": 8, "max_len": 4, "ffn_dim": 16, "intents": 2, **cfg}, n_users, n_items
    )
    assert isinstance(model, ICSRec)
    return model


def test_coarse_loss_masks_samples_with_the_anchors_target():
    model = tiny()
    targets = torch.tensor([7, 7, 9])
    torch.testing.assert_close(model.coarse_grain_loss(A, B, targets), paired_info_nce(A, B, targets))
    model.config.false_negative_mask = False
    torch.testing.assert_close(model.coarse_grain_loss(A, B, targets), paired_info_nce(A, B))


def test_fine_loss_contrasts_each_view_with_its_nearest_normalised_centroid():
    model = tiny(dim=2, heads=1)
    centroids = torch.tensor([[1.0, 0.0], [0.0, 10.0]])
    model.intent_centroids.copy_(centroids)
    model.intent_epoch.fill_(0)
    view = torch.tensor([[0.5, 2.0], [0.0, 9.0], [2.0, 0.5]])
    # nearest in L2 over the raw centroids: (0.5, 2) is 2.06 from c0 and 8.0 from c1 (the dot product with the
    # normalised centroids would pick c1), so intents are [0, 1, 0]
    assert nearest_intents(view, centroids).tolist() == [0, 1, 0]
    unit = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = paired_info_nce(view, unit[[0, 1, 0]], torch.tensor([0, 1, 0]))
    torch.testing.assert_close(model.fine_grain_loss(view), expected)
    # by hand: z0..z2 = views (0.5,2), (0,9), (2,0.5); z3..z5 = their centroids (1,0), (0,1), (1,0);
    # intents 0 1 0 0 1 0; partners 0-3, 1-4, 2-5; negatives: rows of the other intent
    ex = math.exp
    rows = [
        math.log(ex(0.5) + ex(18.0) + ex(2.0)) - 0.5,  # z0: pos z0.z3 = 0.5; negs z1 = 18, z4 = 2
        math.log(ex(9.0) + ex(18.0) + ex(4.5) + 1.0 + 1.0) - 9.0,  # z1: pos z1.z4 = 9; negs z0, z2, z3, z5
        math.log(ex(2.0) + ex(4.5) + ex(0.5)) - 2.0,  # z2: pos z2.z5 = 2; negs z1 = 4.5, z4 = 0.5
        math.log(ex(0.5) + 1.0 + 1.0) - 0.5,  # z3: pos z3.z0 = 0.5; negs z1 = 0, z4 = 0
        math.log(ex(9.0) + ex(2.0) + ex(0.5) + 1.0 + 1.0)
        - 9.0,  # z4: pos 9; negs z0 = 2, z2 = .5, z3, z5 = 0
        math.log(ex(2.0) + 1.0 + 1.0) - 2.0,  # z5: pos z5.z2 = 2; negs z1 = 0, z4 = 0
    ]
    assert float(model.fine_grain_loss(view)) == pytest.approx(sum(rows) / 6, rel=1e-5)
    model.config.false_negative_mask = False
    torch.testing.assert_close(model.fine_grain_loss(view), paired_info_nce(view, unit[[0, 1, 0]]))


def test_the_loss_contrasts_the_anchor_with_its_cross_subsequence_and_both_views_with_intents():
    """The batch's wiring: the coarse term pairs the anchor's encoding with its cross subsequence's (not a
    second dropout view of the anchor), and the fine term sums over both views."""
    model = tiny(dropout=0.0, attn_dropout=0.0)  # no dropout: the encodings below are the loss's own
    torch.manual_seed(1)
    model.intent_centroids.copy_(torch.randn(2, 8))
    model.intent_epoch.fill_(0)
    batch = {
        "inputs": torch.tensor([[-1, -1, 0, 1], [-1, 2, 3, 4], [5, 6, 7, 8], [-1, -1, -1, 9]]),  # -1: PAD
        "positive_inputs": torch.tensor([[-1, -1, 10, 1], [-1, -1, 5, 4], [0, 1, 2, 8], [-1, -1, 11, 6]]),
        "targets": torch.tensor([2, 5, 9, 10]),
    }
    total, parts = model.loss(batch)
    view1, view2 = model.encoder.encode(batch["inputs"]), model.encoder.encode(batch["positive_inputs"])
    c = model.config
    coarse = c.coarse_weight * paired_info_nce(view1, view2, batch["targets"], c.temperature)
    fine = c.fine_weight * (model.fine_grain_loss(view1) + model.fine_grain_loss(view2))
    torch.testing.assert_close(parts["coarse"], coarse)
    torch.testing.assert_close(parts["fine"], fine)
    torch.testing.assert_close(total, parts["ce"] + coarse + fine)
    # the two views' terms differ here, so a loss that counted one view twice would not match
    assert abs(float((model.fine_grain_loss(view1) - model.fine_grain_loss(view2)).detach())) > 1e-3


def test_fine_loss_before_clustering_is_a_clear_error():
    with pytest.raises(RuntimeError, match="fit_intents"):
        tiny().fine_grain_loss(torch.zeros(2, 8))


def test_config_and_registry():
    assert REGISTRY["icsrec"] is ICSRec
    c = tiny().config
    assert (c.coarse_weight, c.fine_weight, c.intents, c.temperature) == (0.3, 0.1, 2, 1.0)
    assert build_model("icsrec", 3, 5).config.intents == 256
    with pytest.raises(pydantic.ValidationError, match="coarse_positive"):
        build_model({"name": "icsrec", "coarse_positive": "first"}, 2, 2)
    with pytest.raises(pydantic.ValidationError, match="intents"):
        build_model({"name": "icsrec", "intents": 1}, 2, 2)


# ---- cross subsequences -----------------------------------------------------------------------------------
SEQS = [[1, 2, 3, 4], [9, 2, 3], [5, 2, 3, 4], [2, 3, 7], [1, 2, 3]]


def cross_case() -> tuple:
    samples = dynamic_sliding_samples(UserSequences.from_lists(SEQS), max_len=3)
    return samples, CrossSubsequences(samples)


def test_cross_subsequences_share_the_target_and_differ_in_input():
    samples, cross = cross_case()
    inputs = samples.input_lists()
    # samples: 0 [1]>2  1 [1,2]>3  2 [1,2,3]>4  3 [9]>2  4 [9,2]>3  5 [5]>2  6 [5,2]>3  7 [5,2,3]>4
    #          8 [2]>3  9 [2,3]>7  10 [1]>2  11 [1,2]>3
    assert samples.targets.tolist() == [2, 3, 4, 2, 3, 2, 3, 4, 3, 7, 2, 3]
    # samples 0 and 10 (and 1 and 11) have the same input: never each other's positive
    assert cross.candidates.tolist() == [2, 3, 1, 3, 4, 3, 4, 1, 4, 0, 2, 3]
    # the reference's fixed choice: the last candidate in sample order, the anchor itself when none
    assert cross.last().tolist() == [5, 8, 7, 10, 11, 10, 11, 2, 11, 9, 5, 8]
    seen: dict[int, set[int]] = {}
    for seed in range(40):
        drawn = cross.draw(torch.Generator().manual_seed(seed))
        for j, p in enumerate(drawn.tolist()):
            assert samples.targets[p] == samples.targets[j]
            assert p == j if cross.candidates[j] == 0 else inputs[p] != inputs[j]
            seen.setdefault(j, set()).add(p)
    # uniform over the candidates: every one of them is drawn
    assert seen[4] == {1, 6, 8, 11} and seen[0] == {3, 5} and seen[9] == {9}
    again = cross.draw(torch.Generator().manual_seed(3))
    assert np.array_equal(again, cross.draw(torch.Generator().manual_seed(3)))  # deterministic given the seed


def test_a_run_of_equal_inputs_never_spans_two_targets():
    """Samples [1]>2 and [1]>3 have the same input but not the same target: sorted next to each other, they
    are in different target groups, and the second one's candidate is [2]>3."""
    samples = dynamic_sliding_samples(UserSequences.from_lists([[1, 2], [1, 3], [2, 3]]), max_len=3)
    assert samples.input_lists() == [[1], [1], [2]] and samples.targets.tolist() == [2, 3, 3]
    cross = CrossSubsequences(samples)
    assert cross.candidates.tolist() == [0, 1, 1]
    assert cross.last().tolist() == [0, 2, 1]
    for seed in range(10):
        assert cross.draw(torch.Generator().manual_seed(seed)).tolist() == [0, 2, 1]


def reference_last_positives(golden: Path) -> dict[tuple[str, tuple[int, ...], int], tuple[int, ...]]:
    """The reference trainer's coarse positive for every line of its subsequence file, by its own rule
    (``datasets.py``): scan the lines with the same target in file order, keep the *last* one whose input
    differs from the anchor's; the anchor's own input when none does.  Keyed by (user, input, target)."""
    lines = read_golden_lines(golden)
    same_target: dict[int, list[tuple[int, ...]]] = {}
    for _, x, t in lines:
        same_target.setdefault(t, []).append(x)
    out = {}
    for uid, x, t in lines:
        last = x
        for other in same_target[t]:
            if other != x:
                last = other
        out[(uid, x, t)] = last
    return out


@pytest.mark.slow
def test_last_positive_is_the_reference_codes_choice_on_beauty(shared_data):
    """``coarse_positive=last`` picks, for every Beauty sample, the very subsequence the reference code pairs
    with it: our sample order (users in file order, then target position) is the reference file's order."""
    expected = reference_last_positives(golden_beauty_path(shared_data))
    samples, rows = prepared_beauty_samples(shared_data)
    last = CrossSubsequences(samples).last()
    got = {row: rows[last[s]][1] for s, row in enumerate(rows)}
    assert len(got) == len(expected) == 131_413
    mismatched = [k for k, v in expected.items() if got.get(k) != v]
    assert not mismatched, f"{len(mismatched)} samples differ, e.g. {mismatched[:3]}"


def test_sampler_adds_positives_keeps_sasrec_batches_and_replays_exactly():
    samples, cross = cross_case()
    sampler = CrossSubsequenceSampler(samples, cross, "random", batch_size=5, generator=torch.Generator())
    plain = SequenceSampler(samples, batch_size=5, generator=torch.Generator())
    batches = list(sampler.iterate(generator=torch.Generator().manual_seed(2)))
    for b, p in zip(batches, plain.iterate(generator=torch.Generator().manual_seed(2)), strict=True):
        assert all(torch.equal(b[k], p[k]) for k in p)  # SASRec's permutation and batches
        assert torch.equal(samples_targets(samples, b["positive_ids"]), b["targets"])
        assert torch.equal(b["positive_inputs"], torch.from_numpy(samples.inputs(b["positive_ids"].numpy())))
    tail = list(sampler.iterate(start=1, generator=torch.Generator().manual_seed(2)))
    for a, b in zip(batches[1:], tail, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    last = CrossSubsequenceSampler(samples, cross, "last", batch_size=5, generator=torch.Generator())
    for b in last.iterate(generator=torch.Generator().manual_seed(2)):
        assert torch.equal(b["positive_ids"], torch.from_numpy(cross.last())[b["sample_ids"]])


def samples_targets(samples, ids: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(samples.targets)[ids]


# ---- k-means ----------------------------------------------------------------------------------------------
def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0, 10], [10, 0, 0], [0, 10, 0], [-10, -10, -10]], dtype=np.float32)
    x = (centers[rng.integers(0, 4, 400)] + rng.normal(0, 0.5, (400, 3))).astype(np.float32)
    return x, centers


def test_kmeans_warm_start_keeps_the_given_centroids_order():
    x, centers = blobs()
    for perm in ([2, 0, 3, 1], [3, 2, 1, 0]):
        got = kmeans(x, 4, iters=5, seed=0, init=centers[perm] + 1.0)
        np.testing.assert_allclose(got, centers[perm], atol=0.3)  # row i converged from init row i
    with pytest.raises(ValueError, match="model.intents"):
        kmeans(x[:4], 4, iters=5, seed=0)


def test_warm_kmeans_redo_rounds_continue_like_more_iterations():
    # the reference keeps one faiss.Clustering with nredo=5: from the second epoch on, each round continues
    # from the previous round's centroids, so 5 rounds of 20 iterations are 100 iterations
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 8)).astype(np.float32)
    init = x[:16].copy()
    rounds = kmeans(x, 16, iters=2, seed=0, init=init, redo=3)
    np.testing.assert_array_equal(rounds, kmeans(x, 16, iters=6, seed=0, init=init, redo=1))
    assert np.abs(rounds - kmeans(x, 16, iters=2, seed=0, init=init, redo=1)).max() > 1e-3


def test_model_clusters_on_cpu_every_epoch_warm_started(monkeypatch):
    import faiss

    calls = []
    real = faiss.Kmeans

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(faiss, "Kmeans", spy)
    model = tiny(n_users=5, intents=3)
    model.set_sequences(UserSequences.from_lists(SEQS))
    inits = []
    import recsys.models.icsrec as mod

    real_kmeans = mod.kmeans

    def spy_kmeans(x, k, **kw):
        inits.append(None if kw["init"] is None else kw["init"].copy())
        assert x.shape == (len(model.train_samples), 8)
        return real_kmeans(x, k, **kw)

    monkeypatch.setattr(mod, "kmeans", spy_kmeans)
    assert not model.has_intents
    first = model.fit_intents(seed=1).clone()
    model.fit_intents(seed=1)
    assert inits[0] is None and np.array_equal(
        inits[1], first.numpy()
    )  # the second run starts from the first
    assert int(model.intent_epoch) == 1 and all(c["gpu"] is False for c in calls)
    assert all(c["nredo"] == 5 and c["niter"] == 20 for c in calls)  # the reference's settings, cold and warm
    assert "intent_centroids" in model.state_dict()
    # the clustering encodes in evaluation mode and leaves the mode as it was
    model.train()
    reps = model.encode_samples()
    assert model.training
    model.eval()
    torch.testing.assert_close(reps, model.encode_sequences(model.train_samples.inputs()))


# ---- training ---------------------------------------------------------------------------------------------
def icsrec_cfg(data: Path, epochs: int = 12, **model) -> dict:
    return {
        "name": "cyc-icsrec",
        "seed": 3,
        "device": "cpu",
        "data": {"source": "amazon_seq", "path": str(data), "name": "Cyc"},
        "model": {
            "name": "icsrec",
            "dim": 32,
            "max_len": 10,
            "layers": 1,
            "ffn_dim": 64,
            "dropout": 0.1,
            "attn_dropout": 0.1,
            "intents": 8,
            **model,
        },  # fmt: skip
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.01, "progress": False, "num_threads": 1},
        "eval": {"ks": [1, 5], "block_size": 64},
        "tracking": {"enabled": False},
    }


def test_training_learns_and_logs_every_loss_part(tmp_path):
    from recsys.pipeline import train_experiment

    cfg = validate_config(icsrec_cfg(write_cyclic_sequences(tmp_path / "d")))
    result = train_experiment(cfg, echo=lambda *_: None)
    first, last = result.history[0], result.history[-1]
    assert {"train/ce", "train/coarse", "train/fine"} <= set(first)
    assert last["train/ce"] < 0.5 * first["train/ce"]
    assert last["train/loss"] == pytest.approx(last["train/ce"] + last["train/coarse"] + last["train/fine"])
    assert result.test_metrics["hit@5"] > 0.8, result.test_metrics
    assert int(result.model.intent_epoch) >= 0


def test_without_both_terms_it_is_sasrec_on_the_same_batches(tmp_path):
    """The 'neither' ablation: same samples, batches, initialisation and loss as SASRec -> same weights."""
    from recsys.pipeline import train_experiment

    data = write_cyclic_sequences(tmp_path / "d", n_users=40)
    raw = icsrec_cfg(data, epochs=2, coarse_loss=False, fine_loss=False)
    ics = train_experiment(validate_config(raw), echo=lambda *_: None)
    raw["model"] = {k: v for k, v in raw["model"].items() if k not in ("intents", "coarse_loss", "fine_loss")}
    raw["model"]["name"] = "sasrec"
    sas = train_experiment(validate_config(raw), echo=lambda *_: None)
    assert set(ics.history[0]) == set(sas.history[0])  # only the ce part
    for k, v in sas.model.state_dict().items():
        assert torch.equal(v, ics.model.state_dict()[k]), k
    assert ics.test_metrics == sas.test_metrics


@pytest.mark.parametrize(
    "switches", [{"fine_loss": False}, {"coarse_loss": False, "coarse_positive": "last"}]
)
def test_ablations_run_only_their_terms(tmp_path, switches):
    from recsys.pipeline import train_experiment

    raw = icsrec_cfg(write_cyclic_sequences(tmp_path / "d", n_users=30), epochs=1, **switches)
    result = train_experiment(validate_config(raw), echo=lambda *_: None)
    parts = {k for k in result.history[0] if k.startswith("train/")}
    assert ("train/coarse" in parts) == switches.get("coarse_loss", True)
    assert ("train/fine" in parts) == switches.get("fine_loss", True)
    assert result.model.has_intents == switches.get("fine_loss", True)


def test_resume_after_crash_is_exact_with_the_clustering_hook(tmp_path):
    from tests.test_trainer import crash_and_resume

    data = write_cyclic_sequences(tmp_path / "d", n_users=40)
    straight, resumed = crash_and_resume(icsrec_cfg(data, epochs=3), tmp_path)
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, straight.model.state_dict()[k]), k


# ---- serving by sequence and the intent view --------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from recsys.pipeline import train_experiment

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("ics")
    cfg = validate_config(icsrec_cfg(write_cyclic_sequences(tmp / "d", n_users=60), epochs=4))
    result = train_experiment(cfg, echo=lambda *_: None)
    result.model.eval()
    return result


def test_retriever_answers_item_sequences_like_the_model(trained, tmp_path):
    from recsys.pipeline import sequence_query_encoder
    from serving import Retriever, UnknownItemError, build_index

    model, ds = trained.model, trained.dataset
    ids = [str(i) for i in ds.item_vocab.sort("item_idx")["item_id"].to_list()]
    build_index(model.item_embeddings().detach().numpy(), ids, tmp_path / "idx")
    retriever = Retriever.load(tmp_path / "idx")
    encoder = sequence_query_encoder(model)
    sequences = [[ids[3], ids[4], ids[5]], [ids[10]], []]
    got = retriever.recommend_for_sequences(sequences, encoder, k=5)
    for seq, recs in zip(sequences, got, strict=True):
        idx = [ids.index(x) for x in seq]
        scores = model.item_embeddings() @ model.encode_sequences(torch.tensor([[-1] * 10 + idx]))[0]
        scores[idx] = -torch.inf
        expected = [ids[i] for i in torch.topk(scores, 5).indices.tolist()]
        assert [r.item_id for r in recs] == expected
        assert not set(seq) & {r.item_id for r in recs}  # the sequence's own items are excluded
    with pytest.raises(UnknownItemError, match="nope"):
        retriever.recommend_for_sequences([["nope"]], encoder)
    with pytest.raises(TypeError, match="list of item ids"):
        retriever.recommend_for_sequences(["abc"], encoder)
    # an item added to the index after training can be recommended, but the model cannot encode it
    from serving import add_items

    add_items(tmp_path / "idx", model.item_embeddings().detach().numpy()[:1] * 0.5, ["brand-new"])
    grown = Retriever.load(tmp_path / "idx")
    from serving import UnencodableItemError

    with pytest.raises(UnencodableItemError, match="'brand-new' were added to the index after training"):
        grown.recommend_for_sequences([[ids[3], "brand-new"]], encoder)
    assert len(grown.recommend_for_sequences([[ids[3]]], encoder, k=5)[0]) == 5
    with pytest.raises(ValueError, match="no sequence encoder"):
        sequence_query_encoder(build_model("mf_bpr", 2, 2))
    with pytest.raises(ValueError, match="item positions must be 1-D integers, got float64"):
        encoder([[1.7, 2.9]])  # it encoded items 1 and 2
    with pytest.raises(ValueError, match=r"item positions must be >= 0, got \[-1\]"):
        encoder([[-1, 2]])  # -1 is the padding: encoded as [2]
    for bad in ([True, 2], np.array([True, False])):  # read as items 1 and 2
        with pytest.raises(ValueError, match="item positions must be .*integers"):
            encoder([bad])
    assert np.array_equal(encoder([np.array([1, 2]), []]), encoder([[1, 2], []]))


def test_intent_view_of_a_sequence(trained):
    from recsys.explain_sequence import IntentMembership, explain_sequence, format_sequence_explanation

    model = trained.model
    members = IntentMembership.of(model)
    assert members.intent.shape == (len(model.train_samples),)
    exp = explain_sequence(model, [3, 4, 5], membership=members, top_intents=3, examples=2, k=4)
    distances = [v.distance for v in exp.intents]
    assert len(exp.intents) == 3 and distances == sorted(distances)
    nearest = int(nearest_intents(model.encode_sequences(torch.tensor([[3, 4, 5]])), model.intent_centroids))
    assert exp.intents[0].intent == nearest
    for v in exp.intents:
        assert v.size == int((members.intent == v.intent).sum())
        for t in v.typical_subsequences:
            assert members.intent[t.sample] == v.intent
            assert [x.item_idx for x in t.items] == model.train_samples.input_lists([t.sample])[0]
        assert len(v.top_items) == 5
    assert len(exp.recommendations) == 4 and not {3, 4, 5} & {r.item_idx for r in exp.recommendations}
    assert "intent" in format_sequence_explanation(exp)
    with pytest.raises(KeyError, match="out of range"):
        explain_sequence(model, [10_000], membership=members)
    # exclude is checked like the items: -1 excluded the last item, n_items failed inside torch
    n = model.n_items
    for bad in (-1, n):
        with pytest.raises(KeyError, match=rf"exclude: item indices \[{bad}\] out of range \[0, {n}\)"):
            explain_sequence(model, [3, 4], membership=members, exclude=[bad])
    for bad in (1.5, True):  # 1.5 was explained as item 1
        with pytest.raises(TypeError, match=f"items: item indices must be integers, got {bad}"):
            explain_sequence(model, [3, bad], membership=members)
    as_tensor = explain_sequence(
        model, torch.tensor([3, 4, 5]), membership=members, top_intents=3, examples=2, k=4
    )
    assert as_tensor == exp
    with pytest.raises(ValueError, match="examples must be a positive integer, got -1"):
        explain_sequence(model, [3, 4], membership=members, examples=-1)


def test_a_model_without_its_training_subsequences_asks_for_them(trained):
    """Loaded from the weights alone, a model has its fitted intents (buffers) but not the training
    subsequences; given the membership computed on the prepared model, explain_sequence failed on None
    (an AttributeError) instead of saying what is missing."""
    from recsys.explain_sequence import IntentMembership, explain_sequence

    members = IntentMembership.of(trained.model)
    bare = build_model(trained.config.model, trained.model.n_users, trained.model.n_items)
    bare.load_state_dict(trained.model.state_dict())
    bare.eval()
    with pytest.raises(RuntimeError, match=r"prepare_dataset\(dataset\) must be called before explaining"):
        explain_sequence(bare, [3, 4, 5], membership=members)


def test_explained_recommendations_break_ties_like_the_served_index(trained):
    import copy

    from recsys.explain_sequence import IntentMembership, explain_sequence

    model = copy.deepcopy(trained.model)
    seq = [3, 4, 5]
    scores = model.item_embeddings() @ model.encode_sequences(torch.tensor([seq]))[0]
    scores[seq] = -torch.inf
    best = int(scores.argmax())
    tied = sorted({best, 40, 11, 27, 33} - set(seq))[:4]  # four items with the best item's vector
    with torch.no_grad():
        model.encoder.item_emb.weight[tied] = model.encoder.item_emb.weight[best].clone()
    rep = model.encode_sequences(torch.tensor([seq]))[0]  # the sequence's own rows are unchanged
    assert len(set((model.item_embeddings()[tied] @ rep).tolist())) == 1  # exactly equal scores
    exp = explain_sequence(model, seq, membership=IntentMembership.of(model), k=6)
    # equal scores in item order, as the served index and the evaluation rank them (torch.topk: any order)
    assert [r.item_idx for r in exp.recommendations[:4]] == tied


def test_intent_view_of_a_model_without_intents():
    from recsys.explain_sequence import explain_sequence

    untrained = build_model({"name": "icsrec", "dim": 8, "max_len": 6, "ffn_dim": 16, "intents": 4}, 3, 20)
    with pytest.raises(ValueError, match="never fitted"):
        explain_sequence(untrained, [3, 4])
    fine_off = build_model(
        {"name": "icsrec", "dim": 8, "max_len": 6, "ffn_dim": 16, "intents": 4, "fine_loss": False}, 3, 20
    )
    with pytest.raises(ValueError, match="trained with model.fine_loss=false, which fits no intents"):
        explain_sequence(fine_off, [3, 4])
    # what `recsys explain` checks as soon as a run's model is built, before preparing and loading it
    from recsys.explain_sequence import require_sequence_intents

    require_sequence_intents(untrained, fitted=False)  # intents are fitted by training: not refused yet
    require_sequence_intents(fine_off, fitted=False)  # fit_intents() may have fitted them
    with pytest.raises(ValueError, match="model 'sasrec' has no sequence intents to explain"):
        require_sequence_intents(build_model({"name": "sasrec", "dim": 8, "max_len": 6}, 3, 20), fitted=False)


def test_no_training_samples_is_the_sasrec_error():
    model = tiny(n_users=2)
    with pytest.raises(ValueError, match="there are no training samples"):
        model.set_sequences(UserSequences.from_lists([[1], [2]]))  # was numpy's IndexError in reduceat


def _seq_exp(trained, **kw):
    from recsys.explain_sequence import IntentMembership, explain_sequence

    model = trained.model
    members = IntentMembership.of(model)
    return model, members, explain_sequence(model, [3, 4, 5], membership=members, **kw)


def test_sequence_views_typical_are_the_closest_members(trained):
    import numpy as np

    model, members, exp = _seq_exp(trained, top_intents=3, examples=2, k=4)
    for v in exp.intents:
        d = np.sort(members.distance[members.intent == v.intent])[: len(v.typical_subsequences)]
        got = [t.distance for t in v.typical_subsequences]
        np.testing.assert_allclose(got, d, rtol=1e-6)


def test_sequence_views_frequent_targets_are_shares_in_item_order(trained):
    import numpy as np

    model, members, exp = _seq_exp(
        trained, top_intents=3, examples=1, items_per_intent=trained.model.n_items, k=4
    )
    samples = model.train_samples
    for v in exp.intents:
        m = np.flatnonzero(members.intent == v.intent)
        counts = np.bincount(samples.targets[m], minlength=model.n_items)
        want = [
            (int(i), counts[i] / m.size)
            for i in sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], i))
        ]
        got = [(x.item_idx, x.score) for x in v.frequent_targets]
        assert [g[0] for g in got] == [w[0] for w in want]  # no zero-count items; ties in item order
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want])  # shares, not counts


def test_sequence_views_report_the_exact_quantities(trained):
    """Every number of the view, recomputed by brute force: the L2 distance, the dot product with the
    normalised centroid (not the raw one), the top items scored by the normalised centroid."""
    model, _, exp = _seq_exp(trained, top_intents=8, examples=1, items_per_intent=trained.model.n_items, k=4)
    with torch.no_grad():
        rep = model.encode_intent_queries(torch.tensor([[3, 4, 5]]))[0].double()
        centroids = model.intent_centroids.double()
        table = model.item_embeddings().double()
    for v in exp.intents:
        unit = centroids[v.intent] / centroids[v.intent].norm()
        assert v.distance == pytest.approx(float((centroids[v.intent] - rep).norm()), rel=1e-5)
        assert v.similarity == pytest.approx(float(rep @ unit), rel=1e-5, abs=1e-6)
        scores = (table @ unit).numpy()
        assert [x.item_idx for x in v.top_items] == np.argsort(-scores, kind="stable").tolist()
        np.testing.assert_allclose(
            [x.score for x in v.top_items], np.sort(scores)[::-1], rtol=1e-5, atol=1e-6
        )


def test_sequence_view_longer_than_max_len_reads_its_last_items(trained):
    """A sequence longer than the model's max length is encoded by its last ``max_len`` items (as the served
    index encodes it); all its items are still excluded; k beyond the items left gives every item left."""
    from recsys.explain_sequence import IntentMembership, explain_sequence

    model = trained.model
    n, max_len = model.n_items, model.config.max_len
    seq = [(7 * i) % n for i in range(max_len + 6)]  # the first items differ from the last max_len
    assert len(set(seq)) == len(seq) and seq[:6] != seq[-6:]
    exp = explain_sequence(model, seq, membership=IntentMembership.of(model), top_intents=2, k=n)
    with torch.no_grad():
        last = torch.tensor([seq[-max_len:]])
        rep = model.encode_intent_queries(last)[0]
        scores = model.item_embeddings() @ model.encode_sequences(last)[0]
    distance = torch.linalg.vector_norm(model.intent_centroids - rep, dim=1)
    assert [v.intent for v in exp.intents] == torch.argsort(distance, stable=True)[:2].tolist()
    scores[seq] = -torch.inf
    expected = [i for i in np.argsort(-scores.numpy(), kind="stable").tolist() if i not in seq]
    assert [r.item_idx for r in exp.recommendations] == expected  # every item left, none of the sequence
    assert len(expected) == n - len(seq)


def test_identical_subsequences_are_equally_distant_and_listed_in_sample_order(trained):
    """Training subsequences with the same input items have the same representation, hence the same distance
    to their centroid (the exact L2 distance, as the sequence's own): the closest are listed in sample order
    on ties.  The distances used to come from cdist's matrix-product shortcut, which gave the same point
    distances differing in the last bits, so equal subsequences were listed in an arbitrary order."""
    from recsys.explain_sequence import IntentMembership, explain_sequence

    model = trained.model
    members = IntentMembership.of(model)
    samples = model.intent_samples
    with torch.no_grad():
        reps = model.encode_samples()
    exact = torch.linalg.vector_norm(reps - model.intent_centroids[torch.as_tensor(members.intent)], dim=1)
    np.testing.assert_allclose(members.distance, exact.numpy(), rtol=1e-6)
    groups: dict[tuple, list[int]] = {}
    for s, items in enumerate(samples.input_lists()):
        groups.setdefault((*items, int(members.intent[s])), []).append(s)
    repeated = [g for g in groups.values() if len(g) > 1 and torch.equal(reps[g[0]], reps[g[1]])]
    assert repeated  # the cyclic sequences repeat subsequences
    for g in repeated:
        assert len(set(members.distance[g].tolist())) == 1, g
    k = model.intent_centroids.shape[0]
    exp = explain_sequence(model, [3, 4, 5], membership=members, top_intents=k, examples=len(samples), k=1)
    for v in exp.intents:
        m = np.flatnonzero(members.intent == v.intent)
        assert [t.sample for t in v.typical_subsequences] == sorted(m, key=lambda s: (members.distance[s], s))


def test_a_long_sequence_is_shown_by_its_last_items_marked_as_such(trained):
    """The text view lists a sequence's last 10 items; a longer one is marked as cut, as the typical
    subsequences are (it read as if those were the whole sequence, or its first items)."""
    from recsys.explain import ItemScore
    from recsys.explain_sequence import format_sequence_explanation

    _, _, exp = _seq_exp(trained, k=2)
    exp.items = [ItemScore(i, str(i), 0.0) for i in range(14)]
    first = format_sequence_explanation(exp).splitlines()[0]
    assert first == "sequence of 14 items: ..., " + ", ".join(f"item {i}" for i in range(4, 14))
    exp.items = exp.items[:10]
    first = format_sequence_explanation(exp).splitlines()[0]
    assert first == "sequence of 10 items: " + ", ".join(f"item {i}" for i in range(10))

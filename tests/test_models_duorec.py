"""DuoRec: same-target positives, the wiring of its four contrast modes, and training.

What DuoRec shares with every next-item model (histories, reloading, exact resume, learning a pattern) is
tested in test_models_sasrec.py (``SEQUENCE_MODELS``)."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch
from torch.nn import functional as F

from features.sequences import UserSequences, dynamic_sliding_samples
from recsys.config import TrainConfig, validate_config
from recsys.contrastive import paired_info_nce
from recsys.models import REGISTRY, build_model
from recsys.models.duorec import DuoRec
from recsys.sequence_sampling import CrossSubsequences, CrossSubsequenceSampler, SequenceSampler
from tests.test_models_sasrec import write_cyclic_sequences

SEQS = [[1, 2, 3, 4], [9, 2, 3], [5, 2, 3, 4], [2, 3, 7], [1, 2, 3]]


def reference_nt_xent(
    z_i: torch.Tensor, z_j: torch.Tensor, tau: float = 1.0, sim: str = "dot"
) -> torch.Tensor:
    """The reference's ``info_nce`` followed by its cross-entropy, written out: 2n rows, the partner as the
    positive (logit column 0), every other row but the row itself as a negative; ``sim`` ``dot`` or ``cos``
    (pairwise cosine similarities), over tau."""
    n = z_i.shape[0]
    z = torch.cat([z_i, z_j])
    if sim == "cos":
        scores = F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2) / tau
    else:
        scores = z @ z.T / tau
    positives = torch.cat([torch.diag(scores, n), torch.diag(scores, -n)]).reshape(2 * n, 1)
    mask = torch.ones(2 * n, 2 * n, dtype=torch.bool).fill_diagonal_(False)
    for k in range(n):
        mask[k, n + k] = mask[n + k, k] = False
    logits = torch.cat([positives, scores[mask].reshape(2 * n, -1)], dim=1)
    return F.cross_entropy(logits, torch.zeros(2 * n, dtype=torch.long))


# ---- same-target positives --------------------------------------------------------------------------------
def test_same_target_positives_are_any_other_sample_with_the_target():
    samples = dynamic_sliding_samples(UserSequences.from_lists(SEQS), max_len=3)
    # samples: 0 [1]>2  1 [1,2]>3  2 [1,2,3]>4  3 [9]>2  4 [9,2]>3  5 [5]>2  6 [5,2]>3  7 [5,2,3]>4
    #          8 [2]>3  9 [2,3]>7  10 [1]>2  11 [1,2]>3
    cross = CrossSubsequences(samples)
    others = {
        j: {p for p in range(12) if p != j and samples.targets[p] == samples.targets[j]} for j in range(12)
    }
    seen: dict[int, set[int]] = {j: set() for j in range(12)}
    for seed in range(60):
        gen = torch.Generator().manual_seed(seed)
        drawn = cross.draw_same_target(gen)
        after = torch.Generator().manual_seed(seed)
        torch.rand(12, generator=after, dtype=torch.float64)
        assert torch.equal(gen.get_state(), after.get_state())  # one rand(N), like draw()
        for j, p in enumerate(drawn.tolist()):
            assert p in others[j] or (p == j and not others[j])
            seen[j].add(p)
    # unlike ICSRec's candidates, an identical input of another user counts (sample 10 for sample 0)
    assert seen[0] == {3, 5, 10} and seen[1] == {4, 6, 8, 11}
    assert seen == {j: others[j] or {j} for j in range(12)}  # every candidate is drawn; 9 ([2,3]>7) is alone


def test_same_target_draws_are_uniform():
    samples = dynamic_sliding_samples(UserSequences.from_lists(SEQS), max_len=3)
    cross = CrossSubsequences(samples)
    gen = torch.Generator().manual_seed(0)
    counts = np.zeros(12, dtype=int)
    for _ in range(3000):
        counts[cross.draw_same_target(gen)[1]] += 1  # sample 1 ([1,2]>3): candidates 4, 6, 8, 11
    assert counts[[4, 6, 8, 11]].sum() == 3000
    assert np.all(np.abs(counts[[4, 6, 8, 11]] - 750) < 100), counts  # 4.2 binomial standard deviations


def test_sampler_same_target_mode_and_unknown_modes():
    samples = dynamic_sliding_samples(UserSequences.from_lists(SEQS), max_len=3)
    cross = CrossSubsequences(samples)
    sampler = CrossSubsequenceSampler(
        samples, cross, "same_target", batch_size=5, generator=torch.Generator()
    )
    plain = SequenceSampler(samples, batch_size=5, generator=torch.Generator())
    gen = torch.Generator().manual_seed(4)
    batches = list(sampler.iterate(generator=gen))
    for b, p in zip(batches, plain.iterate(generator=torch.Generator().manual_seed(4)), strict=True):
        assert all(torch.equal(b[k], p[k]) for k in p)  # SASRec's permutation and batches
        assert torch.equal(torch.from_numpy(samples.targets)[b["positive_ids"]], b["targets"])
        assert torch.equal(b["positive_inputs"], torch.from_numpy(samples.inputs(b["positive_ids"].numpy())))
    # the positives are draw_same_target's, drawn after the permutation
    gen = torch.Generator().manual_seed(4)
    torch.randperm(12, generator=gen)
    expected = torch.from_numpy(cross.draw_same_target(gen))
    assert all(torch.equal(b["positive_ids"], expected[b["sample_ids"]]) for b in batches)
    replay = list(sampler.iterate(start=2, generator=torch.Generator().manual_seed(4)))
    for a, b in zip(batches[2:], replay, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="mode must be one of random, last, same_target, got 'any'"):
        CrossSubsequenceSampler(samples, cross, "any", batch_size=5, generator=torch.Generator())  # type: ignore[arg-type]


def brute_force_same_target(targets: np.ndarray, order: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Sample j's positive written out: the others with its target, in the index's sorted order, the one at
    rank floor(u_j * count); j itself when there are none."""
    out = np.arange(len(targets))
    for j in range(len(targets)):
        others = [p for p in order.tolist() if targets[p] == targets[j] and p != j]
        if others:
            out[j] = others[min(int(u[j] * len(others)), len(others) - 1)]
    return out


def test_same_target_draws_match_a_brute_force_on_random_sample_sets():
    """Random sequences (few items, so many shared targets and identical inputs; some sets are one user
    repeated): every draw is the brute force's choice for the same uniforms, and replays from the seed."""
    rng = np.random.default_rng(0)
    for trial in range(150):
        n_users, n_items = int(rng.integers(1, 10)), int(rng.integers(1, 5))
        seqs = [rng.integers(0, n_items, size=int(rng.integers(2, 7))).tolist() for _ in range(n_users)]
        if trial % 5 == 0:
            seqs = [seqs[0]] * n_users
        samples = dynamic_sliding_samples(UserSequences.from_lists(seqs), max_len=int(rng.integers(1, 5)))
        cross = CrossSubsequences(samples)
        drawn = cross.draw_same_target(torch.Generator().manual_seed(trial))
        u = torch.rand(len(samples), generator=torch.Generator().manual_seed(trial), dtype=torch.float64)
        expected = brute_force_same_target(samples.targets, cross.order, u.numpy())
        np.testing.assert_array_equal(drawn, expected, err_msg=str(seqs))
        np.testing.assert_array_equal(cross.draw_same_target(torch.Generator().manual_seed(trial)), drawn)


def test_a_target_with_one_sample_is_its_own_positive_wherever_it_sorts():
    # targets 0 and 5 have one sample each, and sort before and between the shared ones (2 and 9): the
    # anchor's own index, not the next group's first sample
    samples = dynamic_sliding_samples(
        UserSequences.from_lists([[7, 0], [7, 2], [1, 2], [3, 5], [4, 9], [6, 9]])
    )
    assert samples.targets.tolist() == [0, 2, 2, 5, 9, 9]
    cross = CrossSubsequences(samples)
    for seed in range(20):
        assert cross.draw_same_target(torch.Generator().manual_seed(seed)).tolist() == [0, 2, 1, 3, 5, 4]
    # one target for all samples: always another one
    samples = dynamic_sliding_samples(UserSequences.from_lists([[1, 2], [3, 2], [2, 2]]))
    drawn = [CrossSubsequences(samples).draw_same_target(torch.Generator().manual_seed(s)) for s in range(30)]
    assert all(np.all(d != np.arange(3)) for d in drawn)
    assert {tuple(d) for d in drawn} > {(1, 0, 0)}  # not one fixed choice


# ---- the loss's wiring ------------------------------------------------------------------------------------
def tiny(**cfg) -> DuoRec:
    torch.manual_seed(0)
    model = build_model({"name": "duorec", "dim": 8, "max_len": 4, "ffn_dim": 16, **cfg}, 4, 12)
    assert isinstance(model, DuoRec)
    return model


BATCH = {
    "inputs": torch.tensor([[-1, -1, 0, 1], [-1, 2, 3, 4], [5, 6, 7, 8], [-1, -1, -1, 9]]),  # -1: PAD
    "positive_inputs": torch.tensor([[-1, -1, 10, 1], [-1, -1, 5, 4], [0, 1, 2, 8], [-1, -1, 11, 6]]),
    "targets": torch.tensor([2, 5, 9, 2]),
}


class Recorder:
    """Wraps the encoder's ``encode`` to record the inputs of every call and return a distinct view per call
    (the encoding plus a call-specific offset), as fresh dropout masks would."""

    def __init__(self, model: DuoRec) -> None:
        self.calls: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.encode = model.encoder.encode
        model.encoder.encode = self  # type: ignore[method-assign]

    def __call__(self, seqs: torch.Tensor, dropout: bool | None = None) -> torch.Tensor:
        self.calls.append(seqs)
        self.outputs.append(self.encode(seqs, dropout) + 0.3 * len(self.calls))
        return self.outputs[-1]


def test_duorec_contrasts_a_second_dropout_view_with_the_same_target_sample():
    """The paper's DuoRec (reference ``us_x``): three passes; the cross-entropy on the first, the contrastive
    term between the second (the anchor again) and the third (its same-target sample), the reference's
    NT-Xent weighted by lambda_sup."""
    model = tiny()
    rec = Recorder(model)
    total, parts = model.loss(BATCH)
    assert [c is BATCH["inputs"] for c in rec.calls] == [True, True, False]
    assert rec.calls[2] is BATCH["positive_inputs"]
    h, h_drop, h_pos = rec.outputs
    ce = F.cross_entropy(h @ model.encoder.item_embeddings().T, BATCH["targets"])
    torch.testing.assert_close(parts["ce"], ce)
    torch.testing.assert_close(parts["supervised"], 0.1 * reference_nt_xent(h_drop, h_pos))
    assert set(parts) == {"ce", "supervised"}
    torch.testing.assert_close(total, parts["ce"] + parts["supervised"])
    # the anchor's own encoding is not in the contrastive term: with it, the term would differ
    assert abs(float((reference_nt_xent(h, h_pos) - reference_nt_xent(h_drop, h_pos)).detach())) > 1e-3


@pytest.mark.parametrize(
    ("contrast", "inputs", "terms"),
    [
        ("unsupervised", ["inputs", "inputs"], {"unsupervised": (0, 1)}),
        ("supervised", ["inputs", "positive_inputs"], {"supervised": (0, 1)}),
        ("both", ["inputs", "inputs", "positive_inputs"], {"unsupervised": (0, 1), "supervised": (0, 2)}),
    ],
)
def test_the_ablation_modes_contrast_the_anchors_own_encoding(contrast, inputs, terms):
    """The reference's ``un``, ``su`` and ``us``: each term pairs the encoding the cross-entropy uses with a
    second dropout view or with the same-target sample, each with its own weight."""
    model = tiny(contrast=contrast, unsupervised_weight=0.7, supervised_weight=0.2)
    rec = Recorder(model)
    total, parts = model.loss(BATCH)
    assert [next(k for k in ("inputs", "positive_inputs") if c is BATCH[k]) for c in rec.calls] == inputs
    weight = {"unsupervised": 0.7, "supervised": 0.2}
    for name, (i, j) in terms.items():
        expected = weight[name] * reference_nt_xent(rec.outputs[i], rec.outputs[j])
        torch.testing.assert_close(parts[name], expected)
    assert set(parts) == {"ce", *terms}
    torch.testing.assert_close(total, sum(parts.values()))


def test_duorec_mode_weights_its_term_with_the_supervised_weight_only():
    model = tiny(supervised_weight=0.3, unsupervised_weight=0.05)
    rec = Recorder(model)
    _, parts = model.loss(BATCH)
    torch.testing.assert_close(parts["supervised"], 0.3 * reference_nt_xent(rec.outputs[1], rec.outputs[2]))


@pytest.mark.parametrize("contrast", ["duorec", "unsupervised", "supervised", "both"])
def test_the_contrastive_terms_train_through_both_of_their_views(contrast):
    """As in the reference, no view is detached: each term has a gradient on both encodings it pairs."""
    model = tiny(contrast=contrast)
    rec = Recorder(model)
    _, parts = model.loss(BATCH)
    pairs = {
        "duorec": {"supervised": (1, 2)},
        "unsupervised": {"unsupervised": (0, 1)},
        "supervised": {"supervised": (0, 1)},
        "both": {"unsupervised": (0, 1), "supervised": (0, 2)},
    }[contrast]
    for name, (i, j) in pairs.items():
        grads = torch.autograd.grad(parts[name], [rec.outputs[i], rec.outputs[j]], retain_graph=True)
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name


@pytest.mark.parametrize(("similarity", "tau"), [("dot", 0.5), ("cosine", 0.2), ("cosine", 1.0)])
def test_similarity_and_temperature_match_the_reference(similarity, tau):
    model = tiny(contrast="both", similarity=similarity, temperature=tau, supervised_weight=1.0)
    rec = Recorder(model)
    _, parts = model.loss(BATCH)
    sim = "dot" if similarity == "dot" else "cos"
    h, _, h_pos = rec.outputs
    torch.testing.assert_close(parts["supervised"], reference_nt_xent(h, h_pos, tau, sim))
    if similarity == "cosine":  # any scale, small norms included
        small = model.contrastive_loss(1e-3 * h, 1e-2 * h_pos, BATCH["targets"])
        torch.testing.assert_close(small, reference_nt_xent(h, h_pos, tau, sim))


def test_false_negative_mask_cosine_and_temperature():
    model = tiny(false_negative_mask=True, temperature=0.5, similarity="cosine")
    rec = Recorder(model)
    _, parts = model.loss(BATCH)
    _, h_drop, h_pos = rec.outputs
    # rows 0 and 3 share target 2: masked out of each other's negatives
    expected = paired_info_nce(F.normalize(h_drop, dim=1), F.normalize(h_pos, dim=1), BATCH["targets"], 0.5)
    torch.testing.assert_close(parts["supervised"], 0.1 * expected)
    unmasked = paired_info_nce(F.normalize(h_drop, dim=1), F.normalize(h_pos, dim=1), None, 0.5)
    assert abs(float((expected - unmasked).detach())) > 1e-4
    # cosine: scaling a view changes nothing
    torch.testing.assert_close(model.contrastive_loss(3 * h_drop, h_pos, BATCH["targets"]), expected)


def test_a_batch_trains_the_encoder_through_both_terms():
    model = tiny(contrast="both")
    model.train()
    total, _ = model.loss(BATCH)
    total.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_config_registry_and_repr():
    assert REGISTRY["duorec"] is DuoRec
    with pytest.raises(pydantic.ValidationError, match="contrast"):
        build_model({"name": "duorec", "contrast": "us_x"}, 2, 2)
    with pytest.raises(pydantic.ValidationError, match="supervised_weight"):
        build_model({"name": "duorec", "supervised_weight": -1}, 2, 2)
    assert "contrast=duorec(sup=0.1), tau=1, sim=dot" in repr(tiny())
    assert "contrast=both(unsup=0.1, sup=0.1)" in repr(tiny(contrast="both"))
    assert "contrast=unsupervised(unsup=0.1)" in repr(tiny(contrast="unsupervised"))


def test_make_sampler_uses_the_trainers_generator_and_batch_size():
    model = build_model({"name": "duorec", "dim": 8, "max_len": 4, "ffn_dim": 16}, len(SEQS), 12)
    assert isinstance(model, DuoRec)
    model.set_sequences(UserSequences.from_lists(SEQS))
    sampler = model.make_sampler(TrainConfig(batch_size=5), torch.Generator().manual_seed(8))
    assert isinstance(sampler, CrossSubsequenceSampler) and sampler.mode == "same_target"
    assert model.cross is not None and model.train_samples is not None
    expected = CrossSubsequenceSampler(
        model.train_samples,
        model.cross,
        "same_target",
        batch_size=5,
        generator=torch.Generator().manual_seed(8),
    )
    got, want = list(sampler), list(expected)
    assert [len(b["targets"]) for b in got] == [5, 5, 2]
    for a, b in zip(got, want, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)


# ---- training ---------------------------------------------------------------------------------------------
def duorec_cfg(data, epochs: int = 2, **model) -> dict:
    return {
        "name": "cyc-duorec",
        "seed": 3,
        "device": "cpu",
        "data": {"source": "amazon_seq", "path": str(data), "name": "Cyc"},
        "model": {"name": "duorec", "dim": 16, "max_len": 10, "layers": 1, "ffn_dim": 32, **model},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.01, "progress": False, "num_threads": 1},
        "eval": {"ks": [1, 5], "block_size": 64},
        "tracking": {"enabled": False},
    }


@pytest.mark.parametrize("contrast", ["duorec", "unsupervised", "both"])
def test_training_logs_each_modes_parts_and_samples_positives_only_when_used(tmp_path, contrast):
    from recsys.pipeline import train_experiment

    raw = duorec_cfg(write_cyclic_sequences(tmp_path / "d", n_users=30), contrast=contrast)
    result = train_experiment(validate_config(raw), echo=lambda *_: None)
    parts = {k.removeprefix("train/") for k in result.history[-1] if k.startswith("train/")} - {"loss"}
    expected = {"duorec": {"ce", "supervised"}, "unsupervised": {"ce", "unsupervised"}}.get(
        contrast, {"ce", "unsupervised", "supervised"}
    )
    assert expected <= parts, parts
    last = result.history[-1]
    assert last["train/loss"] == pytest.approx(sum(last[f"train/{p}"] for p in expected))
    sampler = result.model.make_sampler(validate_config(raw).train, torch.Generator())
    assert isinstance(sampler, CrossSubsequenceSampler) == (contrast != "unsupervised")
    assert (result.model.cross is None) == (contrast == "unsupervised")

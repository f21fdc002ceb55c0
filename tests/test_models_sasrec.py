"""SASRec: the encoder's masks, shapes, the padding symbol, query histories, the sampler, and learning.

The tests of what every next-item model shares (``recsys.models.sequential``: histories, samples, training,
reloading, inference) run for every model of ``SEQUENCE_MODELS``; GRU4Rec's own encoder is tested in
test_models_gru4rec.py, DuoRec's loss in test_models_duorec.py, BERT4Rec's in test_models_bert4rec.py."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from eval import evaluate_model
from features import DataConfig, prepare
from features.sequences import PAD, UserSequences, dynamic_sliding_samples, user_sequences
from recsys.config import validate_config
from recsys.embedding import IdEmbedding
from recsys.models import REGISTRY, build_model
from recsys.models.sasrec import SASRec, SASRecEncoder, attention_mask
from recsys.models.sequential import NextItemRecommender
from recsys.sequence_sampling import SequenceSampler
from tests.test_models_registry import registry  # noqa: F401 (a fixture)

SEQUENCE_MODELS = ("sasrec", "gru4rec", "duorec", "sasrec_bce", "iclrec", "bert4rec")
# a small encoder of each next-item model
TINY = {
    "sasrec": {"dim": 8, "ffn_dim": 16},
    "gru4rec": {"dim": 8, "hidden": 12},
    "duorec": {"dim": 8, "ffn_dim": 16},
    "sasrec_bce": {"dim": 8, "ffn_dim": 16},
    "iclrec": {"dim": 8, "ffn_dim": 16, "intents": 4},
    "bert4rec": {"dim": 8, "ffn_dim": 16},
}


def tiny(n_users: int = 3, n_items: int = 20, name: str = "sasrec", **cfg) -> NextItemRecommender:
    torch.manual_seed(0)
    model = build_model({"name": name, **TINY[name], "max_len": 6, **cfg}, n_users, n_items)
    model.eval()
    return model


def dropouts(name: str, p: float) -> dict:
    """Every dropout rate of the model's config set to ``p``."""
    return {"dropout": p, "attn_dropout": p} if name != "gru4rec" else {"dropout": p}


# ---- masks ------------------------------------------------------------------------------------------------
def test_attention_mask_is_causal_and_hides_padding():
    mask = attention_mask(torch.tensor([[PAD, PAD, 3, 4], [1, 2, 3, 4]]))
    assert mask.shape == (2, 1, 4, 4)
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0],  # padded queries see only themselves (never an empty row)
        [0, 1, 0, 0],
        [0, 0, 1, 0],  # real queries never see padding ...
        [0, 0, 1, 1],  # ... nor the future
    ]
    assert mask[1, 0].int().tolist() == np.tril(np.ones((4, 4), dtype=int)).tolist()


def test_no_position_depends_on_the_future():
    model = tiny()
    seq = torch.tensor([[PAD, 1, 2, 3, 4, 5]])
    out = model.encoder(seq)
    for t in range(1, 5):
        changed = seq.clone()
        changed[0, t + 1 :] = torch.tensor([17, 18, 19, 16][: 5 - t])
        out2 = model.encoder(changed)
        torch.testing.assert_close(out2[0, : t + 1], out[0, : t + 1])
        assert not torch.allclose(out2[0, -1], out[0, -1])


def test_no_real_position_depends_on_padding():
    """Perturbing padded positions' embeddings changes nothing; padded positions are not even computed."""
    model = tiny()
    seq = torch.tensor([[PAD, PAD, PAD, 7, 8, 9]])
    out = model.encoder(seq)
    with torch.no_grad():
        model.encoder.pos_emb.weight[:3] += 5.0
    out2 = model.encoder(seq)
    torch.testing.assert_close(out2, out)
    assert torch.count_nonzero(out[0, :3]) == 0


def test_a_row_encodes_the_same_alone_or_in_any_batch():
    """Packing and trimming depend on the batch; the result must not."""
    model = tiny()
    rows = torch.tensor([[PAD, PAD, PAD, PAD, 3, 4], [1, 2, 3, 4, 5, 6], [PAD] * 6, [PAD, PAD, PAD, 9, 8, 7]])
    together = model.encoder.encode(rows)
    for i in range(4):
        torch.testing.assert_close(model.encoder.encode(rows[i : i + 1]), together[i : i + 1])
    torch.testing.assert_close(model.encoder(rows)[:, -1], together)
    # the model's blocked encoding (rows sorted by length, blocks trimmed) keeps the input order
    torch.testing.assert_close(model.encode_sequences(rows, batch_size=2), together)
    assert torch.isfinite(together).all()


def reference_encoder(enc: SASRecEncoder, seq: torch.Tensor, pad_noise: float = 0.0) -> torch.Tensor:
    """A plain dense re-computation of the reference code's encoder (additive -10000 mask, every position
    computed, padded inputs embedded as ``pad_noise`` times random vectors), in eval mode: ``[B, L, d]``."""
    b, length = seq.shape
    d, heads = enc.config.dim, enc.config.heads
    real = seq != PAD
    x = enc.item_emb.weight[seq.clamp(min=0)] * real[..., None] + enc.pos_emb.weight[None, :length]
    x = x + pad_noise * torch.randn_like(x) * (~real)[..., None]
    h = enc.emb_norm(x)
    add = (1.0 - (torch.ones(length, length).tril()[None] * real[:, None, :].float())) * -10000.0
    for block in enc.blocks:
        att = block.attention
        q, k, v = (
            lin(h).view(b, length, heads, d // heads).transpose(1, 2)
            for lin in (att.query, att.key, att.value)
        )
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads) + add[:, None], dim=-1)
        a = att.norm(h + att.out((p @ v).transpose(1, 2).reshape(b, length, d)))
        ff = block.feed_forward
        z = ff.inner(a)
        h = ff.norm(a + ff.outer(0.5 * z * (1 + torch.erf(z / math.sqrt(2)))))
    return h


def test_encoder_matches_a_dense_reference_whatever_padding_holds():
    """Real positions equal the reference computation, even when padded inputs hold random vectors (so no
    real position depends on padding), and the representation is the last position."""
    model = tiny(dropout=0.0, attn_dropout=0.0)
    enc: SASRecEncoder = model.encoder
    seq = torch.tensor([[PAD, PAD, 3, 1, 4, 1], [5, 9, 2, 6, 5, 3], [PAD, PAD, PAD, PAD, PAD, 2]])
    real = seq != PAD
    ref = reference_encoder(enc, seq, pad_noise=3.0)
    torch.testing.assert_close(enc(seq)[real], ref[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.encode(seq), ref[:, -1], atol=1e-5, rtol=1e-5)


def test_length_buckets_compute_the_dense_function_with_gradients():
    """Rows of very different lengths are attended in separate grids (powers of two); every computed token
    is in exactly one, and outputs and gradients equal the dense reference's (dropout off, training mode)."""
    from recsys.models.sasrec import attention_buckets

    model = tiny(n_items=60, max_len=50, dropout=0.0, attn_dropout=0.0)
    model.train()
    enc: SASRecEncoder = model.encoder
    g = torch.Generator().manual_seed(1)
    lengths = [0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 31, 33, 50]
    seq = torch.full((len(lengths), 50), PAD)
    for row, n in enumerate(lengths):
        if n:
            seq[row, 50 - n :] = torch.randint(0, 60, (n,), generator=g)
    computed = seq != PAD
    computed[:, -1] = True
    flat = computed.flatten().nonzero().squeeze(1)
    buckets, unbucket = attention_buckets(seq, computed, flat)
    assert [b.width for b in buckets] == [1, 2, 4, 8, 16, 31, 50]  # classes 1, 2, 4, ..., capped at T
    assert sorted(torch.cat([b.tokens for b in buckets]).tolist()) == list(range(len(flat)))
    assert torch.equal(torch.cat([b.tokens for b in buckets])[unbucket], torch.arange(len(flat)))

    real = seq != PAD
    ours = enc(seq)
    ref = reference_encoder(enc, seq, pad_noise=3.0)
    torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=1e-5)
    weights = torch.randn(ours.shape, generator=g)
    grads = {}
    for name, out in (("ours", ours[real]), ("ref", ref[real])):
        enc.zero_grad()
        (out * weights[real]).sum().backward(retain_graph=True)
        grads[name] = {k: p.grad.clone() for k, p in enc.named_parameters() if p.grad is not None}
    assert grads["ours"].keys() == grads["ref"].keys()
    for key in grads["ours"]:
        torch.testing.assert_close(grads["ours"][key], grads["ref"][key], atol=1e-4, rtol=1e-4, msg=key)


# ---- shapes, padding, config ------------------------------------------------------------------------------
def test_shapes_and_length_fitting():
    model = tiny(n_items=20)
    enc = model.encoder
    assert enc(torch.tensor([[1, 2, 3]])).shape == (1, 6, 8)
    assert enc.encode(torch.randint(0, 20, (4, 9))).shape == (4, 8)
    # a short row is left-padded, a long one truncated to its last max_len items
    torch.testing.assert_close(
        enc.encode(torch.tensor([[1, 2, 3]])), enc.encode(torch.tensor([[PAD] * 3 + [1, 2, 3]]))
    )
    long = torch.tensor([[11, 12, 13, 1, 2, 3, 4, 5, 6]])
    torch.testing.assert_close(enc.encode(long), enc.encode(long[:, -6:]))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        enc(torch.tensor([1, 2, 3]))


def test_padding_is_never_a_rankable_item():
    model = tiny(n_items=20)
    assert model.item_embeddings().shape == (20, 8)
    assert model.logits(torch.tensor([[PAD, 1, 2]])).shape == (1, 20)
    # the only id tables are the item and position tables, both IdEmbedding (the DNIS seam)
    tables = [m for m in model.modules() if isinstance(m, IdEmbedding)]
    assert [t.num for t in tables] == [20, 6]


def test_config_errors_name_the_key():
    with pytest.raises(pydantic.ValidationError, match="heads"):
        build_model({"name": "sasrec", "dim": 10, "heads": 3}, 2, 2)
    with pytest.raises(pydantic.ValidationError, match="dropout"):
        build_model({"name": "sasrec", "dropout": 1.5}, 2, 2)
    assert REGISTRY["sasrec"] is SASRec


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_scoring_before_prepare_is_a_clear_error(name):
    model = tiny(name=name)
    with pytest.raises(RuntimeError, match=rf"{type(model).__name__}\.prepare_dataset"):
        model.query_embeddings(torch.tensor([0]))
    with pytest.raises(RuntimeError, match="prepare_dataset"):
        model.make_sampler(None, torch.Generator())


# ---- the sampler ------------------------------------------------------------------------------------------
def test_sequence_sampler_covers_every_sample_and_resumes_exactly():
    seqs = UserSequences.from_lists([[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11]])
    samples = dynamic_sliding_samples(seqs, max_len=4)
    sampler = SequenceSampler(samples, batch_size=3, generator=torch.Generator().manual_seed(5))
    assert len(sampler) == math.ceil(len(samples) / 3) == 3
    batches = list(sampler.iterate(generator=torch.Generator().manual_seed(1)))
    ids = torch.cat([b["sample_ids"] for b in batches])
    assert sorted(ids.tolist()) == list(range(len(samples)))
    for b in batches:
        assert b["inputs"].shape == (b["users"].numel(), 4)
        assert torch.equal(b["targets"], torch.from_numpy(samples.targets)[b["sample_ids"]])
        assert torch.equal(b["inputs"], torch.from_numpy(samples.inputs(b["sample_ids"].numpy())))
    tail = list(sampler.iterate(start=1, generator=torch.Generator().manual_seed(1)))
    for a, b in zip(batches[1:], tail, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="start"):
        next(sampler.iterate(start=4))


# ---- histories and evaluation -----------------------------------------------------------------------------
def write_cyclic_sequences(folder: Path, n_users: int = 150, n_items: int = 40, seed: int = 0) -> Path:
    """Amazon-format sequences where each next item is the previous one + 1 (mod n_items)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for u in range(n_users):
        start, length = rng.integers(n_items), rng.integers(5, 10)
        lines.append(" ".join(str(x) for x in [u + 1, *((start + np.arange(length)) % n_items + 1)]))
    (folder / "Cyc.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_queries_encode_the_history_before_the_target(tmp_path, name):
    ds = prepare(
        DataConfig(source="amazon_seq", path=str(write_cyclic_sequences(tmp_path / "d", 20)), name="Cyc")
    )
    model = build_model({"name": name, **TINY[name], "max_len": 5}, ds.n_users, ds.n_items)
    model.eval()
    model.prepare(ds.matrix("train"))
    model.prepare_dataset(ds)
    users = torch.arange(ds.n_users)
    expected = {
        "valid": user_sequences(ds, ("train",)),
        "test": user_sequences(ds, ("train", "valid")),
        "all": user_sequences(ds, ("train", "valid", "test")),
    }
    for ctx, seqs in expected.items():
        with model.query_context(ctx):
            got = model.query_embeddings(users)
        torch.testing.assert_close(got, model.encode_sequences(seqs.padded(max_len=5)))
    # outside any context: all known items (serving); contexts nest and restore
    torch.testing.assert_close(
        model.query_embeddings(users), model.encode_sequences(expected["all"].padded(max_len=5))
    )
    with pytest.raises(ValueError, match="query context"):
        with model.query_context("train"):
            pass

    seen = []
    original = model.query_embeddings

    def spy(u):
        seen.append(model._context)
        return original(u)

    model.query_embeddings = spy
    evaluate_model(model, ds, split="valid", ks=(5,))
    evaluate_model(model, ds, split="test", ks=(5,))
    assert seen == ["valid", "test"] and model._context == "all"


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_training_samples_never_target_a_held_out_item(tmp_path, name):
    """The samples come from the training split alone: n - 3 per user of n items (ICSRec's count), none of
    them predicting a validation or test item. With the validation item a target, choosing the weights on
    validation would flatter them."""
    ds = prepare(
        DataConfig(source="amazon_seq", path=str(write_cyclic_sequences(tmp_path / "d", 30)), name="Cyc")
    )
    model = build_model({"name": name, **TINY[name], "max_len": 5}, ds.n_users, ds.n_items)
    model.prepare(ds.matrix("train"))
    model.prepare_dataset(ds)
    samples = model.train_samples
    full = user_sequences(ds, ("train", "valid", "test"))
    assert len(samples) == int(np.maximum(full.lengths - 3, 0).sum())
    expected = dynamic_sliding_samples(full, max_len=5, holdout=2)
    np.testing.assert_array_equal(samples.users, expected.users)
    np.testing.assert_array_equal(samples.targets, expected.targets)
    np.testing.assert_array_equal(samples.inputs(), expected.inputs())


# a small model of each kind for the training tests
SMALL = {
    "sasrec": {"dim": 32, "max_len": 10, "layers": 1, "ffn_dim": 64, "dropout": 0.1, "attn_dropout": 0.1},
    "gru4rec": {"dim": 32, "hidden": 32, "max_len": 10, "dropout": 0.1},
    "duorec": {"dim": 32, "max_len": 10, "layers": 1, "ffn_dim": 64, "dropout": 0.1, "attn_dropout": 0.1},
    "sasrec_bce": {"dim": 32, "max_len": 10, "layers": 1, "ffn_dim": 64, "dropout": 0.1, "attn_dropout": 0.1},
}
SMALL["iclrec"] = {**SMALL["sasrec_bce"], "intents": 8}
# the cloze task on these short sequences: fewer masks than the paper's Beauty 0.6, so that more context is
# left (about 1.5 targets per user and epoch, three batches an epoch: it needs more epochs, LEARNING_EPOCHS)
SMALL["bert4rec"] = {**SMALL["sasrec_bce"], "mask_ratio": 0.2, "last_item_ratio": 0.2}
LEARNING_EPOCHS = {"bert4rec": 80}


def sasrec_cfg(data_path: Path, name: str = "sasrec", **train) -> dict:
    """An experiment config of a small next-item model (``name``: one of ``SEQUENCE_MODELS``) on ``data_path``."""
    return {
        "name": f"cyc-{name}",
        "seed": 3,
        "device": "cpu",
        "data": {"source": "amazon_seq", "path": str(data_path), "name": "Cyc"},
        "model": {"name": name, **SMALL[name]},
        "train": {"epochs": 25, "batch_size": 64, "lr": 0.01, "progress": False, **train},
        "eval": {"ks": [1, 5], "block_size": 64},
        "tracking": {"enabled": False},
    }


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_training_learns_a_sequential_pattern(tmp_path, name):
    """On sequences where the next item is always the previous + 1, the trained model ranks the test item
    first for most users (chance HR@5 is about 5/35), and the loss falls."""
    from recsys.pipeline import train_experiment

    epochs = LEARNING_EPOCHS.get(name, 25)
    cfg = validate_config(sasrec_cfg(write_cyclic_sequences(tmp_path / "d"), name, epochs=epochs))
    result = train_experiment(cfg, echo=lambda *_: None)
    losses = [h["train/loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.test_metrics["hit@5"] > 0.8, result.test_metrics
    assert result.test_metrics["hit@1"] > 0.5, result.test_metrics


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_a_trained_model_encodes_without_dropout(tmp_path, name):
    """Dropout 0.5: a model left in training mode after fit would give a different query embedding at every
    call, and so would an index exported from it."""
    from recsys.pipeline import LoadedRun, build_run_index, train_experiment
    from serving import load_index

    raw = sasrec_cfg(write_cyclic_sequences(tmp_path / "d", n_users=40), name, epochs=2)
    raw["model"].update(dropouts(name, 0.5))
    cfg = validate_config(raw)
    result = train_experiment(cfg, echo=lambda *_: None)
    model = result.model
    assert not model.training
    users = torch.arange(5)
    first = model.query_embeddings(users)
    model.train()  # encode_sequences is inference whatever the mode
    assert torch.equal(model.query_embeddings(users), first)
    assert model.training  # and the mode is restored
    run = LoadedRun("local", cfg, result.dataset, model)
    a, b = (load_index(build_run_index(run, tmp_path / name)).user_emb for name in ("a", "b"))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_a_tracked_run_reloads_with_its_histories(tmp_path, name):
    """MLflow round trip: load_run rebuilds the model, prepares its histories, and scores the same."""
    from recsys.pipeline import load_run, train_experiment

    raw = sasrec_cfg(write_cyclic_sequences(tmp_path / "d", n_users=40), name, epochs=2)
    raw["tracking"] = {"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = train_experiment(validate_config(raw), echo=lambda *_: None)
    run = load_run(result.run_id, uri=raw["tracking"]["uri"])
    again = evaluate_model(run.model, run.dataset, split="test", ks=(1, 5))
    assert again == pytest.approx(result.test_metrics)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_resume_after_crash_is_exact(tmp_path, name):
    """The sequence sampler keeps the trainer's exact resume: crash mid-epoch, resume, same weights."""
    from tests.test_trainer import crash_and_resume

    data = write_cyclic_sequences(tmp_path / "d", n_users=40)
    # sasrec_bce's, iclrec's and bert4rec's batches hold users (40 here): smaller ones, so that the crash is
    # mid-epoch
    batch_size = 16 if name in ("sasrec_bce", "iclrec", "bert4rec") else 64
    straight, resumed = crash_and_resume(sasrec_cfg(data, name, epochs=3, batch_size=batch_size), tmp_path)
    assert resumed.state.step == straight.state.step
    assert straight.state.step > 3 * 2  # more batches per epoch than the two the crash steps through
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, straight.model.state_dict()[k]), k


def test_encoder_dropout_flag_overrides_the_mode_without_touching_it():
    model = tiny(dropout=0.5, attn_dropout=0.5)
    seqs = torch.randint(0, 20, (6, 7))
    model.eval()
    plain = model.encoder.encode(seqs)
    model.train()
    torch.testing.assert_close(model.encoder.encode(seqs, dropout=False), plain, rtol=0, atol=0)
    torch.testing.assert_close(model.encoder(seqs, dropout=False)[:, -1], plain, rtol=0, atol=0)
    assert model.training
    model.eval()
    assert not torch.equal(model.encoder.encode(seqs, dropout=True), plain)
    assert not model.training


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_encode_sequences_refuses_indices_outside_the_catalogue(name):
    model = tiny(n_items=20, name=name)
    for bad in (-7, 20):  # -7 was read as item 0; 20 failed inside torch's embedding lookup
        with pytest.raises(
            ValueError, match=rf"item indices must be in 0\.\.19 \(or -1 for padding\), got {bad}"
        ):
            model.encode_sequences(torch.tensor([[PAD, bad, 3]]))
    width = model.item_embeddings().shape[1]  # d (BERT4Rec: d + 1, its item bias)
    assert model.encode_sequences(torch.tensor([[PAD, 19, 3]])).shape == (1, width)
    # a fraction is no item (1.7 was read as 1); one sequence is a [1, T] batch (a raw IndexError, and a
    # [2, 2, 2] batch was reported as shape (2, 2, 2, 2))
    with pytest.raises(ValueError, match="item indices must be integers, got a torch.float32 array"):
        model.encode_sequences(torch.tensor([[1.7, 2.2]]))
    for shape in ((3,), (2, 2, 2)):
        with pytest.raises(ValueError, match=rf"of shape \[B, T\], got {re.escape(str(shape))}"):
            model.encode_sequences(torch.ones(shape, dtype=torch.long))
    assert model.encode_sequences(np.array([[1, 2]], dtype=np.int32)).shape == (1, width)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_threads_encoding_a_model_in_training_mode(name):
    """A model in training mode served from threads: encoding must neither run with dropout nor change the
    mode, which the other threads would see."""
    from concurrent.futures import ThreadPoolExecutor

    model = tiny(name=name, **dropouts(name, 0.5))
    seqs = torch.randint(1, 20, (64, 6))
    model.eval()
    expected = model.encode_sequences(seqs, batch_size=8)
    model.train()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: model.encode_sequences(seqs, batch_size=8), range(200)))
    assert all(torch.equal(r, expected) for r in results)
    assert model.training


def test_the_query_context_is_per_thread():
    """evaluate_model enters query_context("test") on the shared model; another thread building an index at
    the same time read the test-time histories instead of all known items (8 of 10 indexes wrong)."""
    import copy
    import pickle
    import threading

    model = build_model({"name": "sasrec", "dim": 8, "max_len": 5, "ffn_dim": 16}, 3, 10)
    inside, release, seen = threading.Event(), threading.Event(), []

    def evaluate():
        with model.query_context("test"):
            seen.append(model._context)
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=evaluate)
    worker.start()
    inside.wait(5)
    assert model._context == "all"  # this thread's queries still read every known item
    with model.query_context("valid"):
        assert model._context == "valid"
    release.set()
    worker.join()
    assert seen == ["test"] and model._context == "all"
    with model.query_context("test"):  # per-thread state is neither copied nor pickled
        assert copy.deepcopy(model)._context == "all" and pickle.loads(pickle.dumps(model))._context == "all"


@pytest.mark.usefixtures("registry")
def test_a_next_item_model_of_ones_own_needs_only_its_encoder(tmp_path):
    """The base is usable outside the library (docs/python_api.md): a model that only builds an encoder (here
    the last item's embedding through a linear map) trains on the samples, learns the +1 pattern, and is
    queried with the history before each target."""
    from typing import Literal

    from torch import nn

    from recsys.models import ModelConfig, register_model
    from recsys.pipeline import train_experiment

    class LastItemConfig(ModelConfig):
        name: Literal["last_item"] = "last_item"
        dim: int = 16
        max_len: int = 10

    class LastItemEncoder(nn.Module):
        def __init__(self, n_items: int, dim: int) -> None:
            super().__init__()
            self.items = IdEmbedding(n_items, dim, init="normal", init_std=0.1, ids="items")
            self.map = nn.Linear(dim, dim)

        def reset_parameters(self) -> None:
            self.items.reset_parameters()
            self.map.reset_parameters()

        def encode(self, seqs: torch.Tensor, dropout: bool | None = None) -> torch.Tensor:
            return self.map(self.items(seqs[:, -1].clamp(min=0)))  # inputs are left-padded: last = newest

        def item_embeddings(self) -> torch.Tensor:
            return self.items.all()

    @register_model
    class LastItem(NextItemRecommender):
        config_cls = LastItemConfig

        def build_encoder(self) -> nn.Module:
            return LastItemEncoder(self.n_items, self.config.dim)

    raw = sasrec_cfg(write_cyclic_sequences(tmp_path / "d"), epochs=15)
    raw["model"] = {"name": "last_item"}
    result = train_experiment(validate_config(raw), echo=lambda *_: None)
    assert result.test_metrics["hit@1"] > 0.8, result.test_metrics
    model = result.model
    with model.query_context("test"):  # the query is the newest item before the test target
        newest = model.histories["test"].padded(np.arange(3), max_len=10)[:, -1]
        torch.testing.assert_close(
            model.query_embeddings(torch.arange(3)),
            model.encoder.map(model.encoder.items(torch.from_numpy(newest))).detach(),
        )

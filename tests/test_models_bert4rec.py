"""BERT4Rec: the bidirectional mask, the cloze sampler, the loss by hand and the masked query.

What every next-item model shares (queries, reloading, exact resume, learning) runs for BERT4Rec in
test_models_sasrec.py (``SEQUENCE_MODELS``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from features import DataConfig, prepare
from features.sequences import PAD, UserSequences, user_sequences
from recsys.models import build_model
from recsys.models.bert4rec import BERT4Rec, with_mask
from recsys.models.sasrec import attention_mask
from recsys.sequence_sampling import MASK, ClozeSampler
from tests.test_models_sasrec import write_cyclic_sequences


def tiny(n_items: int = 20, **cfg) -> BERT4Rec:
    torch.manual_seed(0)
    model = build_model({"name": "bert4rec", "dim": 8, "ffn_dim": 16, "max_len": 6, **cfg}, 3, n_items)
    model.eval()
    return model


# ---- bidirectional attention ------------------------------------------------------------------------------
def test_the_bidirectional_mask_sees_later_items_but_never_padding():
    seqs = torch.tensor([[PAD, PAD, 3, MASK], [1, 2, 3, 4]])
    mask = attention_mask(seqs, causal=False)
    assert mask[0, 0].int().tolist() == [
        [1, 0, 1, 1],  # padded queries see themselves, and (unread) the real keys
        [0, 1, 1, 1],
        [0, 0, 1, 1],  # real queries see later cells (a MASK is a real cell) ...
        [0, 0, 1, 1],  # ... and never padding
    ]
    assert mask[1, 0].all()
    assert torch.equal(attention_mask(seqs), attention_mask(seqs, causal=True))  # the default is causal


def test_an_early_position_depends_on_later_items_and_not_on_padding():
    model = tiny(dropout=0.0, attn_dropout=0.0)
    seq = torch.tensor([[PAD, PAD, 1, 2, 3, MASK]])
    out = model.encoder(seq)
    later = seq.clone()
    later[0, 4] = 17
    assert not torch.allclose(model.encoder(later)[0, 2], out[0, 2])  # position 2 sees position 4
    with torch.no_grad():
        model.encoder.pos_emb.weight[:2] += 5.0  # what padded cells would hold, were they computed
    torch.testing.assert_close(model.encoder(seq), out)
    assert torch.count_nonzero(out[0, :2]) == 0
    # the same model made causal: position 2 no longer sees position 4
    causal = tiny(dropout=0.0, attn_dropout=0.0, causal=True)
    torch.testing.assert_close(causal.encoder(later)[0, :4], causal.encoder(seq)[0, :4])


def test_mask_cells_use_the_mask_embedding():
    model = tiny(dropout=0.0, attn_dropout=0.0)
    enc = model.encoder
    tokens = torch.tensor([4, MASK, PAD])
    emb = enc.embed_items(tokens)
    torch.testing.assert_close(emb[0], enc.item_emb.weight[4])
    torch.testing.assert_close(emb[1], enc.mask_emb)
    assert torch.count_nonzero(emb[2]) == 0
    # with the bucketed (packed) attention: equal to the plain forward of a single row
    rows = torch.tensor([[PAD, PAD, PAD, PAD, MASK, 2], [1, MASK, 3, 4, 5, MASK]])
    torch.testing.assert_close(enc(rows)[1:], enc(rows[1:]))
    torch.testing.assert_close(enc(rows)[:1], enc(rows[:1]))


# ---- the cloze sampler ------------------------------------------------------------------------------------
def cloze(seqs: list[list[int]], max_len: int = 5, **kw) -> ClozeSampler:
    args = {"mask_ratio": 0.5, "last_item_ratio": 0.0, "batch_size": 2, **kw}
    return ClozeSampler(
        UserSequences.from_lists(seqs), max_len=max_len, generator=torch.Generator().manual_seed(0), **args
    )


def test_cloze_batches_mask_items_and_keep_their_targets():
    seqs = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [], [10]]
    sampler = cloze(seqs, batch_size=2)
    assert sampler.n == 3 and len(sampler) == 2  # the empty user is skipped
    full = torch.tensor([[3, 4, 5, 6, 7], [PAD, PAD, PAD, 8, 9], [PAD, PAD, PAD, PAD, 10]])
    for _ in range(20):
        for batch in sampler:
            rows = full[torch.searchsorted(torch.tensor([0, 1, 3]), batch["users"])]
            masked = batch["inputs"] == MASK
            assert masked.any(1).all()  # at least one target per example
            assert torch.equal(batch["targets"] != PAD, masked)
            assert torch.equal(batch["targets"][masked], rows[masked])  # the target is the masked item
            assert torch.equal(batch["inputs"][~masked], rows[~masked])  # the rest is untouched
            assert not (masked & (rows == PAD)).any()  # padding is never masked


def test_the_mask_rate_and_the_last_item_examples():
    seqs = [list(range(i, i + 20)) for i in range(200)]
    for ratio in (0.2, 0.6):
        masked = torch.cat([b["inputs"] == MASK for b in cloze(seqs, 20, mask_ratio=ratio, batch_size=64)])
        assert masked.float().mean().item() == pytest.approx(ratio, abs=0.02)
    last = cloze(seqs, 20, mask_ratio=0.6, last_item_ratio=1.0)
    for batch in last:
        masked = batch["inputs"] == MASK
        assert masked[:, -1].all() and masked.sum().item() == batch["users"].numel()
    half = torch.cat([b["inputs"] == MASK for b in cloze(seqs * 5, 20, mask_ratio=0.6, last_item_ratio=0.5)])
    only_last = (half.sum(1) == 1) & half[:, -1]  # all but ~0.4^19 of these are the last-item examples
    assert only_last.float().mean().item() == pytest.approx(0.5, abs=0.05)


def test_an_example_without_a_draw_masks_one_item_uniformly():
    seqs = [[1, 2, 3, 4]] * 4000
    counts = torch.zeros(4)
    for batch in cloze(seqs, 4, mask_ratio=1e-9, batch_size=1000):
        masked = batch["inputs"] == MASK
        assert (masked.sum(1) == 1).all()
        counts += masked.sum(0)
    assert (counts / 4000 - 0.25).abs().max().item() < 0.03


def test_cloze_epochs_replay_from_any_batch():
    seqs = [[u + i for i in range(u % 7 + 1)] for u in range(25)]
    sampler = cloze(seqs, 4, batch_size=4)
    batches = list(sampler.iterate(generator=torch.Generator().manual_seed(3)))
    assert sorted(torch.cat([b["users"] for b in batches]).tolist()) == list(range(25))
    for start in (1, 4, 6):
        tail = list(sampler.iterate(start=start, generator=torch.Generator().manual_seed(3)))
        assert len(tail) == len(batches) - start
        for a, b in zip(batches[start:], tail, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a)

    def by_user(epoch: list[dict]) -> torch.Tensor:
        users, inputs = torch.cat([b["users"] for b in epoch]), torch.cat([b["inputs"] for b in epoch])
        return inputs[torch.argsort(users)]

    # another epoch masks the users anew (the masks come from the epoch's generator too)
    again = list(sampler.iterate(generator=torch.Generator().manual_seed(4)))
    assert not torch.equal(by_user(again), by_user(batches))
    with pytest.raises(ValueError, match="start"):
        next(sampler.iterate(start=len(sampler) + 1))


def test_no_held_out_item_is_ever_a_target(tmp_path):
    ds = prepare(
        DataConfig(source="amazon_seq", path=str(write_cyclic_sequences(tmp_path / "d", 30)), name="Cyc")
    )
    model = build_model({"name": "bert4rec", "dim": 8, "ffn_dim": 16, "max_len": 5}, ds.n_users, ds.n_items)
    model.prepare(ds.matrix("train"))
    model.prepare_dataset(ds)

    class TC:
        batch_size = 7

    train = user_sequences(ds, ("train",))
    held_out = {(u, int(i)) for s in ("valid", "test") for u, i in zip(*ds.matrix(s).nonzero(), strict=True)}
    sampler = model.make_sampler(TC, torch.Generator().manual_seed(0))
    for _ in range(5):
        for batch in sampler:
            for u, row, inputs in zip(batch["users"], batch["targets"], batch["inputs"], strict=True):
                u = int(u)
                expected = torch.from_numpy(train.padded([u], 5)[0])
                masked = row != PAD
                assert torch.equal(row[masked], expected[masked])
                assert torch.equal(inputs[~masked], expected[~masked])
                assert not any((u, int(i)) in held_out for i in row[masked])


# ---- the loss and the query -------------------------------------------------------------------------------
def test_the_loss_by_hand():
    """Cross-entropy at the masked cells, with the projection and the item bias, averaged over all masked
    cells of the batch (not per example)."""
    model = tiny(n_items=9, dropout=0.0, attn_dropout=0.0)
    with torch.no_grad():
        model.encoder.item_bias.copy_(torch.linspace(-1, 1, 9))
    enc = model.encoder
    inputs = torch.tensor([[PAD, PAD, 1, MASK, 3, MASK], [4, 5, MASK, 6, 7, 8]])
    targets = torch.tensor([[PAD, PAD, PAD, 2, PAD, 8], [PAD, PAD, 0, PAD, PAD, PAD]])
    total, parts = model.loss({"inputs": inputs, "targets": targets})
    terms = []
    for row, col in ((0, 3), (0, 5), (1, 2)):
        h = enc(inputs[row : row + 1])[0, col]  # this row alone
        z = enc.project[2](F.gelu(enc.project[0](h)))
        logits = z @ enc.item_emb.weight.T + enc.item_bias
        terms.append(-torch.log_softmax(logits, 0)[targets[row, col]])
    torch.testing.assert_close(total, torch.stack(terms).mean())
    torch.testing.assert_close(parts["ce"], total)
    total.backward()
    assert enc.mask_emb.grad is not None and enc.item_bias.grad.abs().sum() > 0


def test_the_query_is_the_history_with_a_mask_appended():
    model = tiny(n_items=20)
    history = torch.tensor([[PAD, PAD, PAD, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    q = model.encode_sequences(history)
    assert q.shape == (2, 9) and torch.equal(q[:, -1], torch.ones(2))
    expected = model.encoder.encode(torch.tensor([[PAD, PAD, 4, 5, 6, MASK], [2, 3, 4, 5, 6, MASK]]))
    torch.testing.assert_close(q[:, :-1], expected)
    torch.testing.assert_close(with_mask(torch.tensor([[7, 8]]), 6), torch.tensor([[7, 8, MASK]]))
    # scores: the query's inner product with the items' [M_i, b_i] is the model's logits
    with torch.no_grad():
        model.encoder.item_bias.normal_()
    torch.testing.assert_close(q @ model.item_embeddings().T, model.logits(history))
    # the empty history has a finite query; MASK given by a caller is refused (it is no item)
    assert torch.isfinite(model.encode_sequences(torch.full((1, 6), PAD))).all()
    with pytest.raises(ValueError, match="item indices"):
        model.encode_sequences(torch.tensor([[1, MASK]]))


def test_user_queries_and_scores_use_the_masked_query(tmp_path):
    from eval import evaluate_model

    ds = prepare(
        DataConfig(source="amazon_seq", path=str(write_cyclic_sequences(tmp_path / "d", 20)), name="Cyc")
    )
    model = build_model({"name": "bert4rec", "dim": 8, "ffn_dim": 16, "max_len": 5}, ds.n_users, ds.n_items)
    model.eval()
    model.prepare(ds.matrix("train"))
    model.prepare_dataset(ds)
    users = torch.arange(ds.n_users)
    with model.query_context("test"):
        history = torch.from_numpy(model.histories["test"].padded(max_len=5))
        expected = model.encoder.encode(with_mask(history, 5))
        torch.testing.assert_close(model.query_embeddings(users)[:, :-1], expected)
        scores = model.scorer()(users)
        torch.testing.assert_close(scores, model.logits(history))
    metrics = evaluate_model(model, ds, split="test", ks=(5,))
    assert math.isfinite(metrics["ndcg@5"])
    assert np.isclose(model.item_embeddings()[:, -1].abs().sum().item(), 0.0)  # the bias starts at zero


def test_the_run_index_marks_the_item_bias_and_similar_items_leave_it_out(tmp_path):
    """The index of a BERT4Rec run: item vectors ``[M_i, b_i]`` marked ``bias_columns = 1``; users are served
    by the full score, ``similar_items`` compares the ``M_i`` alone (a large bias no longer makes an item
    everyone's neighbour)."""
    from recsys.config import validate_config
    from recsys.pipeline import LoadedRun, build_run_index
    from serving import Retriever
    from tests.test_models_sasrec import sasrec_cfg

    cfg = validate_config(sasrec_cfg(write_cyclic_sequences(tmp_path / "d", 20), "bert4rec"))
    ds = prepare(cfg.data)
    model = build_model(cfg.model, ds.n_users, ds.n_items)
    model.prepare(ds.matrix("train"))
    model.prepare_dataset(ds)
    model.eval()
    with torch.no_grad():
        model.encoder.item_bias.copy_(torch.linspace(0.0, 40.0, ds.n_items))
    retriever = Retriever.load(build_run_index(LoadedRun("r" * 32, cfg, ds, model), tmp_path / "idx"))
    assert retriever.index.bias_columns == 1 and retriever.index.dim == model.query_dim
    table = model.encoder.item_embeddings().detach().numpy()
    got = retriever.similar_items([retriever.index.item_ids[0]], k=3, metric="inner_product")[0]
    sims = table[1:] @ table[0]  # the reference: M_0 . M_j over the other items
    assert [r.item_id for r in got] == [retriever.index.item_ids[1 + j] for j in np.argsort(-sims)[:3]]
    np.testing.assert_allclose([r.score for r in got], np.sort(sims)[::-1][:3], rtol=1e-5)

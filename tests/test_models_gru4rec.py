"""GRU4Rec's encoder: equal to the GRU run on each history alone, padding-blind, with gradients, dropout and
config checks; and a trained run served for a sequence through the command line.  What GRU4Rec shares with
SASRec (histories, samples, training, reloading, inference) is tested in test_models_sasrec.py."""

from __future__ import annotations

import pydantic
import pytest
import torch
import yaml
from torch.nn import functional as F

from features.sequences import PAD
from recsys.embedding import IdEmbedding
from recsys.models import REGISTRY, build_model
from recsys.models.gru4rec import GRU4Rec, GRUEncoder
from tests.test_models_sasrec import sasrec_cfg, write_cyclic_sequences

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(n_items: int = 20, **cfg) -> GRU4Rec:
    torch.manual_seed(0)
    model = build_model({"name": "gru4rec", "dim": 8, "hidden": 12, "max_len": 6, **cfg}, 3, n_items)
    model.eval()
    return model


def one_history(enc: GRUEncoder, items: list[int]) -> torch.Tensor:
    """The module docstring's F for one history, computed without padding or packing: ``[d]``."""
    items = items[-enc.config.max_len :]
    if not items:
        return enc.dense(torch.zeros(enc.config.hidden))  # h_0 = 0: the bias, with its gradient
    x = enc.item_emb.weight[torch.tensor(items)][None]  # [1, n, d]
    _, last = enc.gru(x)  # the plain GRU, h_0 = 0
    return enc.dense(last[-1, 0])


ROWS = [[3, 1, 4, 1, 5], [9], [], [2, 6, 5, 3, 5, 8, 9, 7], [7, 7]]  # the 8-item one is cut to its last 6


def left_padded(rows: list[list[int]], width: int) -> torch.Tensor:
    out = torch.full((len(rows), width), PAD)
    for r, items in enumerate(rows):
        items = items[-width:]
        if items:
            out[r, width - len(items) :] = torch.tensor(items)
    return out


@pytest.mark.parametrize("layers", [1, 2])
def test_a_batch_encodes_each_history_as_the_plain_gru_does(layers):
    """Packing, truncation to max_len and empty rows: every row equals the GRU on its items alone."""
    model = tiny(layers=layers)
    enc: GRUEncoder = model.encoder
    got = enc.encode(left_padded(ROWS, 8))
    for r, items in enumerate(ROWS):
        torch.testing.assert_close(got[r], one_history(enc, items), atol=1e-6, rtol=1e-5)
    # the model's blocked encoding (rows sorted by length) keeps the input order
    torch.testing.assert_close(model.encode_sequences(left_padded(ROWS, 8), batch_size=2), got)


def test_long_rows_keep_their_item_order():
    """Moving the real items to the front must keep their order: an unstable sort of the padding flags
    (torch's default) reorders ties once rows are long, which the short rows above never show."""
    torch.manual_seed(1)
    model = tiny(max_len=50)
    enc: GRUEncoder = model.encoder
    rows = [torch.randint(0, 20, (int(n),)).tolist() for n in torch.randint(1, 51, (64,))]
    got = enc.encode(left_padded(rows, 50))
    for r, items in enumerate(rows):
        torch.testing.assert_close(got[r], one_history(enc, items), atol=1e-5, rtol=1e-4)


def test_padding_anywhere_in_a_row_is_skipped():
    """Extra leading columns, and PAD between items (a sequence given by hand), change nothing: padding never
    enters the recurrence (an embedded zero would move the GRU's state)."""
    enc = tiny().encoder
    plain = enc.encode(left_padded([[4, 5, 6]], 3))
    torch.testing.assert_close(enc.encode(left_padded([[4, 5, 6]], 6)), plain, rtol=0, atol=0)
    torch.testing.assert_close(enc.encode(torch.tensor([[PAD, 4, PAD, 5, PAD, 6]])), plain)
    assert not torch.allclose(enc.encode(left_padded([[5, 6]], 3)), plain)  # and the items do matter


def test_an_empty_history_is_the_untouched_initial_state():
    model = tiny()
    empty = model.encoder.encode(torch.full((2, 4), PAD))
    torch.testing.assert_close(empty, model.encoder.dense.bias.detach().expand(2, -1))
    assert torch.isfinite(model.logits(torch.full((1, 4), PAD))).all()


def test_gradients_through_the_packed_batch_equal_those_of_each_history_alone():
    model = tiny(dropout=0.0)
    model.train()
    seqs = left_padded(ROWS, 6)
    targets = torch.tensor([0, 1, 2, 3, 4])
    params = dict(model.named_parameters())

    F.cross_entropy(model.logits(seqs), targets, reduction="sum").backward()
    batched = {k: p.grad.clone() for k, p in params.items()}
    model.zero_grad()
    table = model.encoder.item_embeddings()
    for r, items in enumerate(ROWS):
        rep = one_history(model.encoder, items)
        F.cross_entropy((rep @ table.T)[None], targets[r : r + 1], reduction="sum").backward(
            retain_graph=True
        )
    for k, p in params.items():
        torch.testing.assert_close(batched[k], p.grad, atol=1e-5, rtol=1e-4, msg=k)
    assert all(batched[k].abs().sum() > 0 for k in params)  # every parameter learns


@pytest.mark.parametrize("layers", [1, 2])
def test_the_dropout_flag_overrides_the_mode_without_touching_it(layers):
    """Also with stacked layers: dropout between GRU layers would follow the module's mode, not the flag."""
    model = tiny(dropout=0.5, layers=layers)
    seqs = torch.randint(0, 20, (6, 7))
    plain = model.encoder.encode(seqs)
    model.train()
    torch.testing.assert_close(model.encoder.encode(seqs, dropout=False), plain, rtol=0, atol=0)
    assert model.training
    assert not torch.equal(model.encoder.encode(seqs), plain)  # the mode's dropout in training
    model.eval()
    assert not torch.equal(model.encoder.encode(seqs, dropout=True), plain)
    assert not model.training


def test_shapes_tables_and_config_errors():
    model = tiny(n_items=20)
    assert model.item_embeddings().shape == (20, 8)
    assert model.logits(torch.tensor([[PAD, 1, 2]])).shape == (1, 20)  # padding is no rankable item
    # the item table is the only id table, an IdEmbedding of items (the DNIS seam)
    tables = [m for m in model.modules() if isinstance(m, IdEmbedding)]
    assert [(t.num, t.ids) for t in tables] == [(20, "items")]
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model.encoder.encode(torch.tensor([1, 2, 3]))
    with pytest.raises(pydantic.ValidationError, match="dropout"):
        build_model({"name": "gru4rec", "dropout": 1.5}, 2, 2)
    with pytest.raises(pydantic.ValidationError, match="hidden"):
        build_model({"name": "gru4rec", "hidden": 0}, 2, 2)
    with pytest.raises(pydantic.ValidationError, match="heads"):  # a SASRec key is no GRU4Rec key
        build_model({"name": "gru4rec", "heads": 2}, 2, 2)
    assert REGISTRY["gru4rec"] is GRU4Rec


def test_a_trained_run_is_evaluated_and_served_for_a_sequence(tmp_path, capsys):
    """Through the command line: train (tracked), ``evaluate --run`` equals the logged test metrics, and
    ``recommend --sequence`` continues the cyclic pattern (each next item is the previous + 1)."""
    import json

    import mlflow

    from recsys.cli import main

    raw = sasrec_cfg(write_cyclic_sequences(tmp_path / "d", n_users=100), "gru4rec")
    raw["tracking"] = {"experiment": "cli-gru4rec"}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    logged = mlflow.get_run(run_id).data.metrics
    assert main(["evaluate", "--run", run_id, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["hit@5"] == pytest.approx(logged["test_final/hit_at_5"], abs=1e-12)

    assert main(["recommend", "--run", run_id, "--json", "--k", "3", "--sequence", "7", "8", "9"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert str(recs[0]["item_id"]) == "10", recs

"""bench/reference_weights.py: the reference code's SASRec state dict, renamed into ours."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.test_models_sasrec import tiny

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import reference_weights  # noqa: E402


def as_reference(model, item_ids: list[str]) -> dict:
    """Our state dict in the reference's layout: item table with padding row 0, the items at their file ids,
    and an extra mask row at the end (``max_item + 2`` rows), random where no item sits."""
    ours = model.state_dict()
    inverse = {ours_key: theirs for theirs, ours_key in reference_weights.BLOCK_KEYS.items()}
    table = torch.randn(max(int(i) for i in item_ids) + 2, ours["encoder.item_emb.weight"].shape[1])
    table[[int(i) for i in item_ids]] = ours["encoder.item_emb.weight"]
    ref = {
        "item_embeddings.weight": table,
        "position_embeddings.weight": ours["encoder.pos_emb.weight"],
        "LayerNorm.weight": ours["encoder.emb_norm.weight"],
        "LayerNorm.bias": ours["encoder.emb_norm.bias"],
    }
    for key, value in ours.items():
        if key.startswith("encoder.blocks."):
            layer, rest = key.removeprefix("encoder.blocks.").split(".", 1)
            module, part = rest.rsplit(".", 1)
            ref[f"item_encoder.layer.{layer}.{inverse[module]}.{part}"] = value
    return ref


def test_conversion_recovers_every_weight_and_reorders_items():
    model = tiny(n_items=5)
    # our item index -> file id: not the identity, with gaps (file ids need not be dense in our order)
    item_ids = ["7", "2", "9", "3", "4"]
    ref = as_reference(model, item_ids)
    other = tiny(n_items=5)
    torch.nn.init.normal_(other.encoder.item_emb.weight)
    converted = reference_weights.convert(ref, item_ids, layers=len(model.encoder.blocks))
    assert converted.keys() == model.state_dict().keys()
    other.load_state_dict(converted)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value, rtol=0, atol=0)
    seq = torch.tensor([[-1, -1, 0, 4, 1, 2]])  # left-padded (PAD = -1), our item indices
    torch.testing.assert_close(other.encoder.encode(seq), model.encoder.encode(seq))


def test_weights_of_another_dataset_are_refused():
    model = tiny(n_items=5)
    ref = as_reference(model, ["1", "2", "3", "4", "5"])
    with pytest.raises(SystemExit, match="another dataset"):
        reference_weights.convert(ref, ["1", "2", "3", "4", "9"], layers=2)


def test_a_model_with_state_beyond_the_encoder_keeps_it():
    """ICLRec's k-means prototypes are not in the reference's SASRec state dict: loading takes the encoder
    from the reference and leaves the prototypes as they are."""
    source = tiny(n_items=5, name="iclrec", intents=3)
    item_ids = ["7", "2", "9", "3", "4"]
    ref = as_reference(source, item_ids)
    target = tiny(n_items=5, name="iclrec", intents=3)
    torch.nn.init.normal_(target.encoder.item_emb.weight)
    target.intent_prototypes.normal_()
    prototypes = target.intent_prototypes.clone()
    reference_weights.load_reference(target, ref, item_ids)
    for key, value in source.encoder.state_dict().items():
        torch.testing.assert_close(target.encoder.state_dict()[key], value, rtol=0, atol=0)
    assert torch.equal(target.intent_prototypes, prototypes)

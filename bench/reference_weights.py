"""Test the ICSRec (or ICLRec) authors' released weights with our SASRec encoder and our evaluation.

The official repository (QinHsiu/ICSRec) ships the best-on-validation weights of one of its own runs,
``src/output/ICSRec-SAS-Beauty-0.pt``.  Loaded into our encoder (same function: ``tests/test_models_sasrec.py``
checks it against a dense re-implementation of the reference encoder), they tell what the reference training
reaches on this data under our protocol and under the reference's: the target our own ICSRec runs are judged
against, measured rather than quoted from the paper.

The reference state dict is renamed key by key; its item table has ``max_item + 2`` rows (row 0 padding, the
last one an unused mask symbol), of which the rows of the real items are taken, in our item-index order.

    RECSYS_HOME=... .venv/bin/python bench/reference_weights.py \\
        --weights /path/to/ICSRec/src/output/ICSRec-SAS-Beauty-0.pt --config configs/beauty_sasrec.yaml \\
        --out bench/results/reference_weights_beauty.json

ICLRec's repository (salesforce/ICLRec) ships ``src/output/ICLRec-Beauty-1.pt`` (1 block, as
``configs/beauty_iclrec.yaml``); its Sports file is not in the stored snapshot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _results import write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# reference name -> ours, per transformer block (the blocks are numbered alike)
BLOCK_KEYS = {
    "attention.query": "attention.query",
    "attention.key": "attention.key",
    "attention.value": "attention.value",
    "attention.dense": "attention.out",
    "attention.LayerNorm": "attention.norm",
    "intermediate.dense_1": "feed_forward.inner",
    "intermediate.dense_2": "feed_forward.outer",
    "intermediate.LayerNorm": "feed_forward.norm",
}


def convert(reference: dict, item_ids: list[str], layers: int) -> dict:
    """The reference's SASRec state dict as ours.

    Args:
        reference: the released state dict (``item_embeddings.weight``: ``[max_item + 2, d]``, ...).
        item_ids: our item index -> the item's id in the data file (the reference's row number).
        layers: number of transformer blocks.
    """
    import torch

    table = reference["item_embeddings.weight"]
    rows = torch.tensor([int(i) for i in item_ids])
    if int(rows.min()) < 1 or int(rows.max()) >= table.shape[0] - 1:
        raise SystemExit(
            f"item ids span {int(rows.min())}..{int(rows.max())}, but the reference table has rows 1.."
            f"{table.shape[0] - 2} for items: the weights belong to another dataset"
        )
    out = {
        "encoder.item_emb.weight": table[rows],
        "encoder.pos_emb.weight": reference["position_embeddings.weight"],
        "encoder.emb_norm.weight": reference["LayerNorm.weight"],
        "encoder.emb_norm.bias": reference["LayerNorm.bias"],
    }
    for layer in range(layers):
        for theirs, ours in BLOCK_KEYS.items():
            for part in ("weight", "bias"):
                out[f"encoder.blocks.{layer}.{ours}.{part}"] = reference[
                    f"item_encoder.layer.{layer}.{theirs}.{part}"
                ]
    return out


def load_reference(model, reference: dict, item_ids: list[str]) -> None:
    """Load the reference's state dict into ``model``'s encoder (:func:`convert`); the model's own state beyond
    the encoder (ICLRec's k-means prototypes) is not the reference's to give and stays as it is."""
    weights = convert(reference, item_ids, len(model.encoder.blocks))
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    model.load_state_dict({**own, **weights})


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="the reference's saved state dict")
    ap.add_argument(
        "--config",
        type=Path,
        required=True,
        help="a config of a SASRec-encoder model of the same dataset and depth",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write the metrics here (JSON)")
    args = ap.parse_args(argv)

    import torch
    from eval_protocols import evaluate_protocols, fresh_model

    cfg, dataset, model = fresh_model(args.config, args.threads)
    item_ids = dataset.item_vocab.sort("item_idx")["item_id"].to_list()
    reference = torch.load(args.weights, map_location="cpu", weights_only=True)
    load_reference(model, reference, item_ids)
    model.eval()
    result = {
        "weights": args.weights.name,
        "config": str(args.config),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **{split: evaluate_protocols(model, dataset, split, cfg.eval.ks) for split in ("valid", "test")},
    }
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

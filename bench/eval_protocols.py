"""Test one set of saved weights under our evaluation protocol and under the ICLRec / ICSRec reference code's.

Ours removes the user's history from the ranking; the reference scores it 0 (``rating_pred[history] = 0``,
reproduced exactly by ``eval.evaluate_model(excluded_score=0.0)``) and also ranks two rows that are no items
(its padding and mask rows, learned negatives), for which two never-relevant entries of score 0 stand in
(``zero_score_items=2``, see ``eval.evaluate_model``).  Any weights file of a run folder works, e.g.
``best_model.pt`` of a run still in progress:

    RECSYS_HOME=... .venv/bin/python bench/eval_protocols.py --config configs/beauty_sasrec.yaml \\
        --weights $RECSYS_HOME/runs/beauty-sasrec-<fingerprint>/best_model.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROTOCOLS = {
    "ours": {},
    "history scored 0": {"excluded_score": 0.0},
    "history scored 0 + 2 zero-score non-items": {"excluded_score": 0.0, "zero_score_items": 2},
}


def model_for(cfg):
    """``(dataset, model)``: the resolved config's prepared dataset and its model, untrained and prepared, for
    loading weights into."""
    from features import prepare
    from recsys.models import build_model
    from recsys.pipeline import prepare_model

    dataset = prepare(cfg.data)
    model = build_model(cfg.model, dataset.n_users, dataset.n_items)
    prepare_model(model, dataset)
    return dataset, model


def fresh_model(config: Path, threads: int = 1):
    """``(cfg, dataset, model)`` for a config file: :func:`model_for` with ``threads`` torch threads."""
    import torch

    from recsys.config import load_config

    torch.set_num_threads(threads)
    cfg = load_config(config, [])
    return (cfg, *model_for(cfg))


def evaluate_protocols(model, dataset, split: str, ks) -> dict:
    """``{protocol: metrics}`` of ``model`` (in eval mode) on ``split`` under every entry of :data:`PROTOCOLS`."""
    from eval import evaluate_model

    return {
        name: evaluate_model(model, dataset, split, ks=ks, **kwargs) for name, kwargs in PROTOCOLS.items()
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--weights", type=Path, required=True, help="a state dict saved by the trainer")
    ap.add_argument("--split", default="test", choices=["valid", "test"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    cfg, dataset, model = fresh_model(args.config, args.threads)
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    out = evaluate_protocols(model, dataset, args.split, cfg.eval.ks)
    print(
        json.dumps(
            {"config": str(args.config), "weights": str(args.weights), "split": args.split, **out}, indent=1
        )
    )
    return out


if __name__ == "__main__":
    main()

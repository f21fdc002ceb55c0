"""Full-ranking top-k evaluation: blocked exact top-k, metrics, and scoring of saved recommendation files.

Definitions of every metric and of the tie rule: ``docs/metrics.md``.
"""

from eval.metrics import per_user_metrics, ranking_metrics
from eval.ranking import evaluate_model, full_ranking_topk, full_ranking_topk_embeddings, topk
from eval.recs_file import evaluate_recs_file
from eval.significance import PairedDifference, paired_difference

__all__ = [
    "PairedDifference",
    "evaluate_model",
    "evaluate_recs_file",
    "full_ranking_topk",
    "full_ranking_topk_embeddings",
    "paired_difference",
    "per_user_metrics",
    "ranking_metrics",
    "topk",
]

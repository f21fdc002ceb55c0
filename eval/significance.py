"""Paired comparison of two systems evaluated on the same users: is B's mean metric above A's by more than the
users' spread explains?

A top-k metric is a mean over users, and two systems ranked for the same users with the same relevant items
give paired observations ``a_u``, ``b_u``. The difference of the means is the mean of ``d_u = b_u - a_u``; its
standard error ``s_d / sqrt(n)`` gives a confidence interval from Student's t distribution with ``n - 1``
degrees of freedom, and the paired t-test's two-sided p-value (``scipy.stats.ttest_rel``). Urbano, Lima and
Hanjalic (SIGIR 2019, "Statistical significance testing in information retrieval: an empirical analysis of type
I, type II and type III errors") found the t-test, with the permutation test, the best-behaved on IR evaluation
data, and the Wilcoxon and sign tests worse; Sakai (SIGIR Forum 2014, "Statistical reform in information
retrieval?") argues for reporting the difference with its confidence interval, not a p-value alone. With
thousands of users the mean difference is close to normal even though each ``d_u`` is not.

The p-value is for one metric and one pair of systems. Comparing many metrics or runs, some differences pass
any threshold by chance: read them together, or adjust (e.g. Holm) for the family compared.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """B minus A on one metric, over the users both were evaluated on.

    ``ci_low`` / ``ci_high`` bound the mean difference at ``confidence``; ``p_value`` is the two-sided paired
    t-test's (1.0 when every user's difference is 0, 0.0 when all are the same non-zero value). ``better`` /
    ``worse`` / ``tied`` count the users whose value is above / below / equal to A's."""

    metric: str
    n_users: int
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    better: int
    worse: int
    tied: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_difference(
    a: np.ndarray, b: np.ndarray, metric: str = "", *, confidence: float = 0.95
) -> PairedDifference:
    """Compare per-user values ``b`` with ``a`` (``float[U]`` each, aligned by user).

    Users with NaN (no relevant item: :func:`eval.metrics.per_user_metrics`) are left out, so the means equal
    the metrics :func:`eval.metrics.ranking_metrics` reports; they must be the same users in ``a`` and ``b``.

    Raises:
        ValueError: different shapes, NaN for different users, ``confidence`` outside (0, 1), or fewer than 2
            users with values.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need two aligned [U] arrays, got shapes {a.shape} and {b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():  # the users with a relevant item are the same for both: else not one protocol
        user = int(np.flatnonzero(nan_a != nan_b)[0])
        raise ValueError(f"user {user} (row) has a value in one system and none in the other: not paired")
    a, b = a[~nan_a], b[~nan_a]
    n = int(a.size)
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 users with values, got {n}")
    d = b - a
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:  # every user moved by the same amount: no spread to test against
        low = high = mean
        p = 1.0 if mean == 0.0 else 0.0
    else:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
        low, high = mean - half, mean + half
        p = float(stats.ttest_rel(b, a).pvalue)
    return PairedDifference(
        metric=metric,
        n_users=n,
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        difference=mean,
        ci_low=low,
        ci_high=high,
        p_value=p,
        better=int((d > 0).sum()),
        worse=int((d < 0).sum()),
        tied=int((d == 0).sum()),
        confidence=confidence,
    )

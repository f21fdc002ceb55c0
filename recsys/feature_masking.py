r"""Feature-level augmentations of the SSL two-tower model (Yao et al., CIKM 2021, arXiv:2007.12865, Sec. 3.2-3.3).

An item is a set of F features.  An augmentation turns one item into two *views* by masking features (a
masked feature is replaced by that feature's learned default embedding in the tower) and then dropping
values of multi-valued features.  Masks are ``BoolTensor[B, F]``, True = masked.

* **RFM** (random feature masking, complementary): the features are split at random into two disjoint
  halves; view 1 masks one half, view 2 the other (:func:`random_complementary_masks`).
* **RFM without complementary views** (the paper's Table 5 ablation): each view masks its own independent
  random half (:func:`independent_random_masks`), so the views may share or both miss a feature.
* **CFM** (correlated feature masking): one seed feature per batch, drawn uniformly; the masked group is the
  seed plus the features with the largest mutual information with it, until the group holds ``ceil(F / 2)``
  features: the paper's stated intent, "masked and retained sets of roughly the same size" (its text's seed
  plus floor(k/2) partners would mask more than half; see docs/two_tower.md); view 1 masks the group, view 2
  the rest (:func:`correlated_masks`).  Masking correlated features together removes the shortcut of
  reading a masked feature off a near-copy in the same view.
* **Value dropout** on multi-valued features (:func:`value_dropout`): each value is dropped independently
  with probability ``rate``; a list that loses every value keeps the unknown value 0.
* **Feature dropout** (the "FD" baseline on the main task): every feature masked independently with
  probability ``rate`` (:func:`feature_dropout_masks`).

All randomness comes from an optional ``torch.Generator`` (the global RNG when None, like ``nn.Dropout``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "correlated_group",
    "correlated_masks",
    "feature_dropout_masks",
    "independent_random_masks",
    "random_complementary_masks",
    "value_dropout",
]

PAD = -1


def random_complementary_masks(
    batch: int, n_features: int, generator: torch.Generator | None = None, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RFM: per row, a random half (``ceil(F/2)`` features) masked in view 1 and the other half in view 2.

    Returns two ``BoolTensor[batch, F]`` with ``m1 ^ m2`` all True (disjoint and covering)."""
    _check_features(n_features)
    order = torch.rand(batch, n_features, generator=generator).argsort(dim=1)
    m1 = order < math.ceil(n_features / 2)
    return m1.to(device), (~m1).to(device)


def independent_random_masks(
    batch: int, n_features: int, generator: torch.Generator | None = None, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RFM without complementary views: two independent random halves (``ceil(F/2)`` masked each)."""
    _check_features(n_features)
    half = math.ceil(n_features / 2)
    m1 = torch.rand(batch, n_features, generator=generator).argsort(dim=1) < half
    m2 = torch.rand(batch, n_features, generator=generator).argsort(dim=1) < half
    return m1.to(device), m2.to(device)


def correlated_group(mi: np.ndarray | torch.Tensor, seed: int) -> list[int]:
    """The CFM masked group of a seed feature: the seed, then the other features by decreasing mutual
    information with it (ties by lower index), until the group holds ``ceil(F / 2)`` features.

    Args:
        mi: ``[F, F]`` mutual information (only row ``seed`` is read, its diagonal ignored).
        seed: the seed feature's index.
    """
    mi = np.asarray(mi, dtype=np.float64)
    n = mi.shape[0]
    if mi.shape != (n, n):
        raise ValueError(f"mutual information must be a square [F, F] matrix, got shape {mi.shape}")
    if not 0 <= seed < n:
        raise ValueError(f"seed feature {seed} is outside [0, {n})")
    others = [j for j in range(n) if j != seed]
    ranked = sorted(others, key=lambda j: (-mi[seed, j], j))
    return [seed, *ranked[: math.ceil(n / 2) - 1]]


def correlated_masks(
    mi: np.ndarray | torch.Tensor,
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """CFM for one batch: a uniformly drawn seed feature; view 1 masks its correlated group
    (:func:`correlated_group`), view 2 the complement.  Returns ``(m1, m2, seed)``, masks ``[batch, F]``."""
    n = int(np.asarray(mi).shape[0])
    _check_features(n)
    seed = int(torch.randint(n, (1,), generator=generator))
    group = torch.zeros(n, dtype=torch.bool)
    group[correlated_group(mi, seed)] = True
    m1 = group.expand(batch, n).clone()
    return m1.to(device), (~m1).to(device), seed


def feature_dropout_masks(
    batch: int,
    n_features: int,
    rate: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Each feature of each row masked independently with probability ``rate``: ``BoolTensor[batch, F]``."""
    _check_rate(rate)
    return (torch.rand(batch, n_features, generator=generator) < rate).to(device)


def value_dropout(codes: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop each value of a padded multi-valued field ``LongTensor[B, L]`` (PAD = -1) with probability
    ``rate``; a row left without values holds the unknown code 0 in its first column.  Returns a new tensor."""
    _check_rate(rate)
    if rate == 0.0:
        return codes
    drop = (torch.rand(codes.shape, generator=generator) < rate).to(codes.device) & (codes != PAD)
    out = codes.masked_fill(drop, PAD)
    empty = (out == PAD).all(dim=1)
    out[empty, 0] = 0
    return out


def _check_features(n: int) -> None:
    if n < 2:
        raise ValueError(f"feature masking needs at least 2 features to make two views, got {n}")


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"a dropout rate must be in [0, 1), got {rate}")

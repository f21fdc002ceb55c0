"""The one module through which every id-embedding table goes.

Every model that learns a vector per user or per item (MF-BPR, LightGCN, and the models built on them) holds
it in an :class:`IdEmbedding` instead of a bare ``nn.Embedding``.  The point is a single seam: an
embedding-dimension search such as DNIS (Cheng et al., "Differentiable Neural Input Search for Recommender
Systems", 2020), which learns a soft mask over the dimensions of every feature's embedding, can find all
id-embedding tables of any model by type (``[m for m in model.modules() if isinstance(m, IdEmbedding)]``)
and wrap or replace them, without knowing the model.  For that to work, models read their tables only
through :meth:`IdEmbedding.forward` (a lookup) or :meth:`IdEmbedding.all` (the whole table), never through
``.weight`` directly in their forward computation.

A table may say what its rows are (``ids="users"`` or ``"items"``), so that a search that treats ids by how
often they occur (DNIS's feature blocks) can count them in the training interactions; and a search may install
a *scale* (:meth:`IdEmbedding.set_scale`): a function of the looked-up ids that multiplies their vectors, so
that every lookup and :meth:`IdEmbedding.all` return the scaled vectors while the table itself stays as
trained.  The scale is not part of the table's state: whoever installs it owns (and saves) its parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

EmbeddingInit = Literal["normal", "xavier_uniform", "xavier_normal"]
IdKind = Literal["users", "items"]
#: A scale: ids ``LongTensor[...]`` -> multipliers ``Tensor[..., dim]`` of their vectors.
ScaleFn = Callable[[torch.Tensor], torch.Tensor]


class IdEmbedding(nn.Module):
    """A table of ``num`` learned vectors of size ``dim``, indexed by dense ids.

    Args:
        num: number of ids (rows).
        dim: embedding dimension (columns).
        init: ``"normal"``: N(0, ``init_std``²) (LightGCN's official code uses std 0.1);
            ``"xavier_uniform"``: Glorot uniform (torch-geometric's LightGCN); ``"xavier_normal"``: Glorot
            normal (DCCF's official code).
        init_std: standard deviation of the ``"normal"`` initialisation.
        ids: what the rows are: ``"users"`` or ``"items"`` (dense user / item indices), or ``None`` for other
            ids (positions, feature values).

    Attributes:
        weight: ``Parameter[num, dim]``.
    """

    def __init__(
        self,
        num: int,
        dim: int,
        *,
        init: EmbeddingInit = "normal",
        init_std: float = 0.1,
        ids: IdKind | None = None,
    ) -> None:
        super().__init__()
        if num < 1 or dim < 1:
            raise ValueError(f"IdEmbedding needs num >= 1 and dim >= 1, got num={num}, dim={dim}")
        if init not in ("normal", "xavier_uniform", "xavier_normal"):
            raise ValueError(f"init must be 'normal', 'xavier_uniform' or 'xavier_normal', got {init!r}")
        if ids not in (None, "users", "items"):
            raise ValueError(f"ids must be 'users', 'items' or None, got {ids!r}")
        self.num = num
        self.dim = dim
        self.init = init
        self.init_std = init_std
        self.ids: IdKind | None = ids
        self._scale: ScaleFn | None = None
        self.weight = nn.Parameter(torch.empty(num, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the table from the configured initialisation (uses torch's global RNG)."""
        if self.init == "normal":
            nn.init.normal_(self.weight, mean=0.0, std=self.init_std)
        elif self.init == "xavier_uniform":
            nn.init.xavier_uniform_(self.weight)
        else:
            nn.init.xavier_normal_(self.weight)

    def set_scale(self, scale: ScaleFn | None) -> None:
        """Multiply every looked-up vector by ``scale(ids)`` from now on (``None``: stop).  The function must
        return ``Tensor[..., dim]`` for ids ``LongTensor[...]``; gradients flow through it to whatever it
        reads."""
        self._scale = scale

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """``LongTensor[...]`` of ids -> ``Tensor[..., dim]`` (scaled when a scale is installed)."""
        vectors = F.embedding(idx, self.weight)
        return vectors if self._scale is None else vectors * self._scale(idx)

    def all(self) -> torch.Tensor:
        """The whole table, ``Tensor[num, dim]`` (differentiable; the parameter itself, or the scaled table
        when a scale is installed)."""
        if self._scale is None:
            return self.weight
        return self.weight * self._scale(torch.arange(self.num, device=self.weight.device))

    def extra_repr(self) -> str:
        init = f"normal(std={self.init_std:g})" if self.init == "normal" else self.init
        ids = f", ids={self.ids}" if self.ids else ""
        scaled = ", scaled" if self._scale is not None else ""
        return f"{self.num}, {self.dim}, init={init}{ids}{scaled}"

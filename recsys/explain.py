"""Intent explanations for models with latent intents (DCCF).

For a user, an explanation gives

* the user's **intent distribution** ``p(k | u)``: the softmax weights the model itself puts on the user's
  intent prototypes when it aggregates intent-aware messages, averaged over the layers
  (:math:`\\frac1L \\sum_l \\mathrm{softmax}(E^{(l)}_u C_U)`, see :mod:`recsys.models.dccf`);
* for each of the top intents ``k``: the **items most aligned** with it, i.e. the items that the prototype
  ``c_k`` would retrieve if it were a user (largest ``c_k . e_i`` over the final item embeddings), and the
  **recommended items it drives**: each of the user's top-N recommendations (training items excluded) is
  attributed to the intent with the largest ``p(k | u) * (c_k . e_i)``.

The attribution is a reading aid, not an exact decomposition of the score ``e_u . e_i``: the intent message
enters the final embedding through later layers as well.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp
import torch

from eval.ranking import topk

if TYPE_CHECKING:
    from recsys.models.dccf import DCCF, DCCFViews


@dataclass
class ItemScore:
    item_idx: int
    item_id: str
    score: float
    title: str | None = None


@dataclass
class IntentDetail:
    intent: int
    weight: float
    """``p(k | u)``."""
    aligned_items: list[ItemScore]
    """Items with the largest ``c_k . e_i``."""
    drives: list[ItemScore] = field(default_factory=list)
    """The user's recommendations attributed to this intent (score: the recommendation score)."""


@dataclass
class UserExplanation:
    user_idx: int
    user_id: str
    distribution: list[float]
    """``p(k | u)`` for every intent ``k``."""
    top_intents: list[IntentDetail]
    recommendations: list[ItemScore]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_intents(model: torch.nn.Module) -> DCCF:
    """A ValueError naming the model unless it has latent intents to explain (checkable as soon as the model
    is built: ``recsys explain`` refuses before loading the rest of the run). Returns the model, the DCCF it
    then is."""
    from recsys.models.dccf import DCCF

    if not isinstance(model, DCCF) or model.user_intent is None:
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        raise ValueError(
            f"model {name!r} has no latent intents to explain (DCCF with disentangle=true has; ICSRec's k-means "
            "intents are explained for a sequence: `recsys explain --run RUN --sequence ITEM ...`, or "
            "recsys.explain_sequence in Python)"
        )
    return model


@torch.no_grad()
def intent_distributions(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-averaged intent weights of all users ``[U, K]`` and all items ``[I, K]`` (rows sum to 1)."""
    model = require_intents(model)
    views = model.forward_views()
    return _layer_mean_intents(model, views, "user"), _layer_mean_intents(model, views, "item")


def _layer_mean_intents(model: DCCF, views: DCCFViews, side: Literal["user", "item"]) -> torch.Tensor:
    """``p(k | node)`` of one side, averaged over the layers the intent messages read (``E^(0)..E^(L-1)``)."""
    n_u = model.n_users
    rows = slice(None, n_u) if side == "user" else slice(n_u, None)
    return torch.stack([model.intent_weights(e[rows], side) for e in views.layers[:-1]]).mean(0)


def check_counts(**counts: int) -> None:
    """Each count (``k``, ``top_intents``, ...) must be a positive integer (the serving layer's ``check_k``
    rule): a ValueError names the first that is not (``top_intents=-1`` sliced off the last intent, ``k=-1``
    failed inside ``torch.topk``)."""
    from serving._topk import check_k

    for name, value in counts.items():
        check_k(value, name)


def check_indices(values: Sequence[int], size: int, name: str, what: str) -> list[int]:
    """Dense indices, checked: integers (``operator.index``: Python's, NumPy's and 0-d integer tensors; 2.5
    was read as 2, and ``True`` is no index either) in ``[0, size)``; a KeyError names those outside (-1
    picked the last row, ``size`` failed inside torch). Both errors name the argument (``name``) and the
    kind of index (``what``: "item", "user")."""
    out = []
    for value in values:
        try:
            # bools, and arrays that are not scalars: operator.index takes tensor(True) and tensor([3])
            if (
                isinstance(value, bool)
                or getattr(value, "ndim", 0) != 0
                or "bool" in str(getattr(value, "dtype", ""))
            ):
                raise TypeError
            out.append(operator.index(value))
        except TypeError:
            raise TypeError(f"{name}: {what} indices must be integers, got {value!r}") from None
    bad = [i for i in out if not 0 <= i < size]
    if bad:
        raise KeyError(f"{name}: {what} indices {bad[:5]} out of range [0, {size})")
    return out


def explain_user(
    model: torch.nn.Module, user_idx: int, train: sp.csr_matrix, **options: Any
) -> UserExplanation:
    """Explain the recommendations of one user (dense index ``user_idx``) of a model with intents: one
    :func:`explain_users` explanation (``options``: its keyword arguments, ``item_ids``, ``k``, ...)."""
    model = require_intents(model)
    check_indices([user_idx], model.n_users, "user_idx", "user")  # the argument named as the caller wrote it
    return explain_users(model, [user_idx], train, **options)[0]


@torch.no_grad()
def explain_users(
    model: torch.nn.Module,
    user_idxs: Sequence[int],
    train: sp.csr_matrix,
    *,
    user_ids: list[str] | None = None,
    item_ids: list[str] | None = None,
    titles: list[str | None] | None = None,
    top_intents: int = 3,
    items_per_intent: int = 5,
    k: int = 10,
) -> list[UserExplanation]:
    """Explain the recommendations of users (dense indices ``user_idxs``) of a model with intents, one
    explanation each, in order.

    Args:
        model: a prepared DCCF (``disentangle=True``).
        user_idxs: dense user indices.
        train: ``U x I`` interactions to exclude from the recommendations (the CLI passes all known
            interactions, as the served index excludes them).
        user_ids / item_ids / titles: raw ids and titles by dense index, for display (default: the indices).
        top_intents: how many intents to detail; items_per_intent: aligned items listed per intent;
        k: recommendations to attribute.

    The model's propagation (one full graph pass), the intent weights and the items aligned with each intent
    are computed once for all of them; only the top-k and its attribution are per user."""
    model = require_intents(model)
    check_counts(top_intents=top_intents, items_per_intent=items_per_intent, k=k)
    user_idxs = check_indices(user_idxs, model.n_users, "user_idxs", "user")
    train = sp.csr_matrix(train)  # the rows are sliced below; CSC or COO indices mean something else
    if train.shape != (model.n_users, model.n_items):
        # another shape would exclude the wrong items, or none, without a word
        raise ValueError(f"train has shape {train.shape}, the model expects {(model.n_users, model.n_items)}")
    views = model.forward_views()  # one propagation for the embeddings and the intent weights
    final = views.final  # [U + I, d], computed on each access
    users_final, items_final = final[: model.n_users], final[model.n_users :]
    dist_u = _layer_mean_intents(model, views, "user")  # [U, K]
    prototypes, _ = model.intent_prototypes()  # [d, K]: user intents live in the user embedding space
    affinity = items_final @ prototypes  # [I, K]: c_k . e_i

    def item(i: int, s: float) -> ItemScore:
        return ItemScore(
            i,
            item_ids[i] if item_ids is not None else str(i),
            float(s),
            titles[i] if titles is not None else None,
        )

    aligned: dict[int, list[ItemScore]] = {}  # per intent, shared by the users

    def aligned_items(intent: int) -> list[ItemScore]:
        if intent not in aligned:
            col = affinity[:, intent]
            top_s, top_i = topk(col, min(items_per_intent, col.numel()))
            aligned[intent] = [item(int(i), float(s)) for i, s in zip(top_i, top_s, strict=True)]
        return aligned[intent]

    out = []
    for user_idx in user_idxs:
        p = dist_u[user_idx]  # [K]
        scores = items_final @ users_final[user_idx]  # [I]
        seen = train.indices[train.indptr[user_idx] : train.indptr[user_idx + 1]]
        scores[torch.as_tensor(seen, dtype=torch.long)] = -torch.inf
        n_recs = min(k, int(torch.isfinite(scores).sum()))
        rec_scores, rec_items = topk(scores, n_recs)  # equal scores in item order, as the served index
        recommendations = [item(int(i), float(s)) for i, s in zip(rec_items, rec_scores, strict=True)]
        driver = (p[None, :] * affinity[rec_items]).argmax(1)  # [k] intent attributed to each recommendation
        details = [
            IntentDetail(
                intent,
                float(p[intent]),
                list(aligned_items(intent)),
                [recommendations[r] for r in range(n_recs) if int(driver[r]) == intent],
            )
            for intent in torch.argsort(p, descending=True)[:top_intents].tolist()
        ]
        out.append(
            UserExplanation(
                user_idx,
                user_ids[user_idx] if user_ids is not None else str(user_idx),
                [float(x) for x in p],
                details,
                recommendations,
            )
        )
    return out


def dominant_intents(model: torch.nn.Module) -> np.ndarray:
    """Each user's most weighted intent, ``int[U]`` (for clustering agreement with known groups)."""
    users, _ = intent_distributions(model)
    return users.argmax(1).cpu().numpy()


def format_explanation(exp: UserExplanation) -> str:
    """A readable text rendering of an explanation."""

    def label(x: ItemScore) -> str:
        return f"{x.title} (item {x.item_id})" if x.title else f"item {x.item_id}"

    lines = [f"user {exp.user_id}: {len(exp.distribution)} intents"]
    for d in exp.top_intents:
        lines.append(f"\nintent {d.intent}: weight {d.weight:.3f}")
        lines.append("  most aligned items:")
        lines += [f"    - {label(x)}  (alignment {x.score:.3f})" for x in d.aligned_items]
        if d.drives:
            lines.append("  drives these recommendations:")
            lines += [f"    - {label(x)}  (score {x.score:.3f})" for x in d.drives]
        else:
            lines.append("  drives none of the top recommendations")
    others = [x for x in exp.recommendations if not any(x in d.drives for d in exp.top_intents)]
    if others:
        lines.append(
            f"\n{len(others)} of the top-{len(exp.recommendations)} recommendations are driven by other intents"
        )
    return "\n".join(lines)

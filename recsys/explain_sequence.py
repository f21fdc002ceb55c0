"""The intent view of a sequence model with k-means intents (ICSRec, ICLRec).

ICSRec (Qin et al., WSDM 2024; :mod:`recsys.models.icsrec`) clusters the representations of all training
subsequences into K intents every epoch and keeps the centroids with its weights; ICLRec (Chen et al., WWW
2022; :mod:`recsys.models.iclrec`) clusters the mean representations of the users' training inputs (one
"subsequence" per user, whose target is the user's last training item).  A model shows its intents through
``intent_centroids`` ``[K, d]``, ``has_intents``, ``intent_samples`` (the clustered points, a
:class:`~features.sequences.SubsequenceSamples`), ``encode_samples()`` (their representations) and
``encode_intent_queries(seqs)`` (the representation a sequence is assigned by: ICSRec's last position, ICLRec's
mean).  For an item sequence this module gives

* its **nearest intents**: the centroids closest in L2 distance to the sequence's intent representation (the
  assignment the model's intent loss uses), with the distance and the dot product with the normalised
  centroid (the similarity that loss contrasts);
* for each of them, what **typifies the intent**: the training subsequences assigned to it that lie
  closest to its centroid (input items and target), the items its normalised centroid scores highest when
  used as a query over the item table, and the most frequent targets among its subsequences;
* the sequence's top-k **recommendations** (its own items excluded).

Assigning all training subsequences needs one encoding pass over them; :class:`IntentMembership` holds it so
that several sequences can be explained with one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from eval.ranking import topk
from features.sequences import pad_sequences
from recsys.explain import ItemScore, check_counts, check_indices

if TYPE_CHECKING:
    from recsys.models.iclrec import ICLRec
    from recsys.models.icsrec import ICSRec


@dataclass
class TypicalSubsequence:
    sample: int
    """Index of the training subsequence."""
    user_id: str
    items: list[ItemScore]
    """Its input items, oldest first (score: 0)."""
    target: ItemScore
    """The item it predicts (score: 0)."""
    distance: float
    """L2 distance of its representation to the intent's centroid."""


@dataclass
class IntentView:
    intent: int
    distance: float
    """L2 distance of the sequence's representation to the centroid."""
    similarity: float
    """Dot product of the representation with the L2-normalised centroid."""
    size: int
    """Training subsequences assigned to the intent."""
    typical_subsequences: list[TypicalSubsequence] = field(default_factory=list)
    top_items: list[ItemScore] = field(default_factory=list)
    """Items the normalised centroid scores highest (score: that dot product)."""
    frequent_targets: list[ItemScore] = field(default_factory=list)
    """Most frequent targets of the intent's subsequences (score: their share of its subsequences)."""


@dataclass
class SequenceExplanation:
    items: list[ItemScore]
    """The explained sequence (score: 0)."""
    intents: list[IntentView]
    recommendations: list[ItemScore]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_sequence_intents(model: torch.nn.Module, fitted: bool = True) -> ICSRec | ICLRec:
    """A ValueError unless the model has sequence intents to explain: a sequence model with k-means intents
    and (``fitted``) its centroids fitted, by training with the fine-grain loss or by ``fit_intents()``.
    ``fitted=False`` checks what a model shows as soon as it is built (``recsys explain`` refuses before
    loading the rest). Returns the model, the ICSRec or ICLRec it then is."""
    from recsys.models.iclrec import ICLRec
    from recsys.models.icsrec import ICSRec

    if not isinstance(model, ICSRec | ICLRec):
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        raise ValueError(
            f"model {name!r} has no sequence intents to explain (ICSRec with fine_loss=true and ICLRec with "
            "intent_loss=true have)"
        )
    if fitted and not getattr(model, "has_intents", False):  # fit_intents() fits them whatever the losses
        config = getattr(model, "config", None)
        for key in ("fine_loss", "intent_loss"):  # ICSRec's, ICLRec's
            if getattr(config, key, True) is False:
                raise ValueError(f"the model was trained with model.{key}=false, which fits no intents")
        raise ValueError("the model's intents were never fitted (train it, or call fit_intents())")
    return model


@dataclass
class IntentMembership:
    """Every training subsequence's intent and its distance to the centroid.

    Attributes:
        intent: ``int64[N]`` nearest centroid of each training subsequence.
        distance: ``float32[N]`` its L2 distance to that centroid.
    """

    intent: np.ndarray
    distance: np.ndarray

    @classmethod
    @torch.no_grad()
    def of(cls, model: torch.nn.Module) -> IntentMembership:
        """One encoding pass over ``model.train_samples`` (without dropout)."""
        model = require_sequence_intents(model)
        reps = model.encode_samples()  # [N, d]
        centroids = model.intent_centroids
        intent = torch.empty(reps.shape[0], dtype=torch.long, device=reps.device)
        distance = torch.empty(reps.shape[0], device=reps.device)
        for i in range(0, reps.shape[0], 65536):  # [block, K] distances at a time
            # the exact distance, as the sequence's own: the matrix-product shortcut gave equal points
            # distances differing in the last bits (equal subsequences listed in any order)
            d = torch.cdist(reps[i : i + 65536], centroids, compute_mode="donot_use_mm_for_euclid_dist")
            distance[i : i + 65536], intent[i : i + 65536] = d.min(1)
        return cls(intent.cpu().numpy(), distance.cpu().numpy())


@torch.no_grad()
def explain_sequence(
    model: torch.nn.Module,
    items: Sequence[int],
    *,
    item_ids: Sequence[str] | None = None,
    titles: Sequence[str | None] | None = None,
    user_ids: Sequence[str] | None = None,
    membership: IntentMembership | None = None,
    exclude: Sequence[int] | None = None,
    top_intents: int = 3,
    examples: int = 3,
    items_per_intent: int = 5,
    k: int = 10,
) -> SequenceExplanation:
    """Explain a sequence of item indices (oldest first) with the intents of a trained ICSRec or ICLRec.

    Args:
        model: an ICSRec or ICLRec with fitted intents, prepared on its dataset (for the training subsequences).
        items: dense item indices of the sequence.
        item_ids / titles / user_ids: raw ids and titles by dense index, for display (default: the indices).
        membership: the training subsequences' intents (computed here when not given).
        exclude: item indices never recommended (default: the sequence's items).
        top_intents: nearest intents to detail; examples: typical subsequences per intent;
        items_per_intent: top and frequent items per intent; k: recommendations.
    """
    model = require_sequence_intents(model)
    check_counts(top_intents=top_intents, examples=examples, items_per_intent=items_per_intent, k=k)
    n_items = model.n_items
    seq = check_indices(items, n_items, "items", "item")
    excluded = seq if exclude is None else check_indices(exclude, n_items, "exclude", "item")
    membership = membership or IntentMembership.of(model)
    samples = model.intent_samples
    if samples is None:  # a model loaded without its dataset, given another's membership
        raise RuntimeError(
            f"{type(model).__name__}.prepare_dataset(dataset) must be called before explaining a sequence"
        )

    def item(i: int, s: float = 0.0) -> ItemScore:
        return ItemScore(
            i,
            item_ids[i] if item_ids is not None else str(i),
            float(s),
            titles[i] if titles is not None else None,
        )

    padded = pad_sequences([seq], max_len=model.config.max_len)
    rep = model.encode_intent_queries(padded)[0]  # [d], no dropout: what intents are assigned by
    centroids = model.intent_centroids  # [K, d]
    unit = torch.nn.functional.normalize(centroids, dim=1)
    table = model.item_embeddings()  # [I, d]
    distance = torch.linalg.vector_norm(centroids - rep, dim=1)  # [K]
    nearest = torch.argsort(distance, stable=True)[:top_intents].tolist()

    views = []
    for c in nearest:
        members = np.flatnonzero(membership.intent == c)
        closest = members[np.argsort(membership.distance[members], kind="stable")[:examples]]
        typical = [
            TypicalSubsequence(
                int(s),
                user_ids[int(samples.users[s])] if user_ids is not None else str(int(samples.users[s])),
                [item(int(i)) for i in samples.input_lists([s])[0]],
                item(int(samples.targets[s])),
                float(membership.distance[s]),
            )
            for s in closest
        ]
        top_s, top_i = topk(table @ unit[c], min(items_per_intent, n_items))
        counts = np.bincount(samples.targets[members], minlength=n_items)
        frequent = np.argsort(-counts, kind="stable")[:items_per_intent]
        views.append(
            IntentView(
                c, float(distance[c]), float(rep @ unit[c]), int(members.size), typical,
                [item(int(i), float(s)) for i, s in zip(top_i, top_s, strict=True)],
                [item(int(i), counts[i] / max(members.size, 1)) for i in frequent if counts[i] > 0],
            )
        )  # fmt: skip

    scores = table @ model.encode_sequences(padded)[0]  # [I]: the query (ICLRec's differs from ``rep``)
    scores[torch.as_tensor(excluded, dtype=torch.long)] = -torch.inf
    k = min(k, int(torch.isfinite(scores).sum()))
    rec_s, rec_i = topk(scores, k)  # equal scores in item order, as the served index
    recs = [item(int(i), float(s)) for i, s in zip(rec_i, rec_s, strict=True)]
    return SequenceExplanation([item(i) for i in seq], views, recs)


def format_sequence_explanation(exp: SequenceExplanation) -> str:
    """A readable text rendering of a sequence explanation."""

    def label(x: ItemScore) -> str:
        return f"{x.title} (item {x.item_id})" if x.title else f"item {x.item_id}"

    shown = ("..., " if len(exp.items) > 10 else "") + ", ".join(label(x) for x in exp.items[-10:])
    lines = [f"sequence of {len(exp.items)} items: {shown}"]  # the last 10, marked as such
    for v in exp.intents:
        lines.append(
            f"\nintent {v.intent}: distance {v.distance:.3f}, similarity {v.similarity:.3f}, "
            f"{v.size} training subsequences"
        )
        lines.append("  typical training subsequences (closest to the centroid):")
        for t in v.typical_subsequences:
            inputs = ", ".join(label(x) for x in t.items[-5:])
            lines.append(
                f"    - user {t.user_id}: [{'..., ' if len(t.items) > 5 else ''}{inputs}] -> {label(t.target)}"
            )
        lines.append("  items the intent scores highest:")
        lines += [f"    - {label(x)}  (score {x.score:.3f})" for x in v.top_items]
        if v.frequent_targets:
            lines.append("  most frequent next items of its subsequences:")
            lines += [f"    - {label(x)}  ({x.score:.1%})" for x in v.frequent_targets]
    lines.append(f"\ntop-{len(exp.recommendations)} next items:")
    lines += [f"  {r:>2}. {label(x)}  (score {x.score:.3f})" for r, x in enumerate(exp.recommendations, 1)]
    return "\n".join(lines)

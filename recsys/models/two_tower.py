r"""Two-tower retrieval with a self-supervised item task (feature masking).

Tiansheng Yao, Xinyang Yi, Derek Zhiyuan Cheng, Felix Yu, Ting Chen, Aditya Menon, Lichan Hong, Ed H. Chi,
Steve Tjoa, Jieqi Kang, Evan Ettinger. "Self-supervised Learning for Large-scale Item Recommendations."
CIKM 2021. https://arxiv.org/abs/2007.12865

Towers.  Each tower maps a set of features to a unit vector: every feature gives an ``emb_dim`` vector — a
categorical code through its embedding table, a multi-valued feature as the mean of its values' embeddings,
a standardised number through a learned affine map — and a masked feature gives its learned default
embedding instead.  The F vectors are concatenated and passed through an MLP (ReLU), then L2-normalised:

.. math::  q = \mathrm{norm}(\mathrm{MLP}_q([e_1; \dots; e_{F_q}])), \qquad
           v = \mathrm{norm}(\mathrm{MLP}_v([e_1; \dots; e_{F_v}])), \qquad s(q, v) = q^\top v .

Query tower: the user id, the user's side features (MovieLens: age, gender, occupation, zip), and the user's
most recent ``history_len`` items (an item-id multi-valued feature).  Item tower: the item id and the item's
side features (MovieLens: genres, decade, year; Amazon: the attribute set).  The item tower is shared by the
main and the SSL task.  Every embedding table is an :class:`recsys.embedding.IdEmbedding`.

Main task.  In-batch softmax over the batch's items with temperature :math:`\tau`, with the sampling-bias
correction of Yi et al. (RecSys 2019), switchable:

.. math::  L_{main} = -\frac{1}{B} \sum_i \log \frac{e^{s_{ii}^c}}{\sum_j e^{s_{ij}^c}}, \qquad
           s_{ij}^c = s(q_i, v_j) / \tau - \log p_j,

with :math:`p_j` the probability that item j is in a batch: its frequency among the training samples
(``logq: frequency``), or the streaming estimate of Yi et al. (``logq: streaming``: :math:`p_j = 1/\delta_j`
with :math:`\delta_j \leftarrow (1-\alpha)\delta_j + \alpha (t - A_j)`, the smoothed gap between the steps
at which j was sampled), or none.  Other in-batch rows with the same item as row i are not negatives of i.

SSL task.  A batch of items drawn uniformly from the (warm) catalogue — not the main batch, whose items
follow the power-law of the training data — is augmented twice (:mod:`recsys.feature_masking`: RFM, RFM
without complementary views, CFM, then value dropout) and the two views are contrasted with InfoNCE over
in-batch negatives at temperature :math:`\tau_{ssl}`:

.. math::  L_{ssl} = -\frac{1}{N} \sum_i \log \frac{e^{z_i^\top z'_i / \tau_{ssl}}}{\sum_j e^{z_i^\top z'_j / \tau_{ssl}}},
           \qquad L = L_{main} + \alpha L_{ssl}.

As in the main task, other rows holding row i's own item are left out of its sum: the batch is drawn with
replacement, and on a small catalogue a third of its rows can repeat an item, whose second view (identical to
the positive when the masks are shared and nothing is dropped) would be pushed away from the item itself.

Baselines in the same model: ``ssl_weight: 0`` (no SSL); ``feature_dropout`` (each item feature masked
with that probability in the main task); ``spread_out`` (the regulariser of Zhang et al., ICCV 2017, on the
non-matching in-batch item pairs: :math:`M_1^2 + \max(0, M_2 - 1/d)` with :math:`M_1, M_2` the mean and the
mean square of their inner products).

Cold items.  With ``cold_item_fraction > 0`` a seeded share of the catalogue is removed from everything the
model learns from (:mod:`features.cold_items`).  An item without training interactions — a held-out item, or
a new item added at serving time (:meth:`TwoTower.embed_new_items`) — is embedded with its id feature
masked (the id's learned default embedding), i.e. from its side features alone.

Batches (:class:`TwoTowerSampler`): ``users`` ``[B]``, ``inputs`` ``[B, L]`` (the items before the target,
left-padded with -1), ``targets`` ``[B]``, ``ssl_items`` ``[N]``.  Training samples are every training
interaction after a user's first, with the user's preceding ``history_len`` items as the history
(:func:`features.sequences.dynamic_sliding_samples`), so a target is never part of its own query.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Literal, cast

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from features.feature_arrays import PAD, FeatureField, feature_arrays, fields_from_spec
from features.sequences import (
    TIME_ORDERED_PROTOCOLS,
    SubsequenceSamples,
    UserSequences,
    dynamic_sliding_samples,
)
from recsys.embedding import IdEmbedding
from recsys.feature_masking import (
    correlated_masks,
    feature_dropout_masks,
    independent_random_masks,
    random_complementary_masks,
    value_dropout,
)
from recsys.models.base import CONTEXT_SPLITS, HistoryQueries, ModelConfig, Recommender

HISTORY = "history"


class TwoTowerConfig(ModelConfig):
    """Hyper-parameters of the SSL two-tower model (defaults: our ML-100K settings, see docs/two_tower.md)."""

    name: Literal["two_tower"] = "two_tower"
    emb_dim: int = Field(default=32, ge=1)
    """Embedding size of every input feature."""
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [128])
    """Hidden layer widths of both towers' MLPs (ReLU)."""
    dim: int = Field(default=64, ge=1)
    """Output size d of both towers (unit vectors)."""
    history_len: int = Field(default=20, ge=1)
    """The user's most recent items in the query tower."""
    temperature: float = Field(default=0.07, gt=0)
    """Softmax temperature of the main task (the paper: 0.06-0.07)."""
    logq: Literal["frequency", "streaming", "none"] = "frequency"
    """Sampling-bias correction: subtract log p_j estimated from training frequencies, by the streaming
    estimator, or not at all."""
    streaming_alpha: float = Field(default=0.01, gt=0, le=1)
    """Learning rate of the streaming frequency estimator."""
    ssl_weight: float = Field(default=0.0, ge=0)
    """alpha: weight of the SSL loss; 0 turns the SSL task off."""
    ssl_temperature: float = Field(default=0.1, gt=0)
    """Temperature of the SSL InfoNCE."""
    ssl_batch_size: int = Field(default=512, ge=2)
    """Items per SSL batch, drawn uniformly from the warm catalogue."""
    masking: Literal["correlated", "random", "random_independent", "none"] = "correlated"
    """SSL feature masking: CFM, RFM, RFM without complementary views, or none (value dropout only)."""
    value_dropout: float = Field(default=0.3, ge=0, lt=1)
    """SSL: drop rate of the values of multi-valued item features, applied after masking."""
    feature_dropout: float = Field(default=0.0, ge=0, lt=1)
    """Baseline: mask each item feature with this probability in the main task (0 = off)."""
    spread_out: float = Field(default=0.0, ge=0)
    """Baseline: weight of the spread-out regulariser on in-batch item embeddings (0 = off)."""
    cold_item_fraction: float = Field(default=0.0, ge=0, lt=1)
    """Share of the catalogue held out of training altogether (cold-item evaluation)."""
    cold_item_seed: int = 0
    """Seed of the choice of cold items."""
    train_fraction: float = Field(default=1.0, gt=0, le=1)
    """Share of the training samples kept (seeded by ``cold_item_seed``): the paper's gains grew with less
    training data; users' histories (query inputs) are unchanged."""
    mi_bins: int = Field(default=16, ge=2)
    """Quantile bins of numeric item features in the mutual information of CFM."""


# ---- towers -------------------------------------------------------------------------------------------------
class FeatureTower(nn.Module):
    """Features -> unit vectors: per-feature embeddings (or learned defaults where masked), concatenated,
    through an MLP, L2-normalised.

    Args:
        fields: the F input features (:class:`features.feature_arrays.FeatureField`).
        emb_dim: e, the embedding size of every feature.
        hidden: hidden widths of the MLP.
        out_dim: d.
    """

    def __init__(self, fields: list[FeatureField], emb_dim: int, hidden: list[int], out_dim: int) -> None:
        super().__init__()
        self.fields = list(fields)
        self.emb_dim = emb_dim
        self.tables = nn.ModuleDict(
            {
                f.name: IdEmbedding(max(f.cardinality, 1), emb_dim, init_std=0.05)
                for f in fields
                if f.kind != "dense"
            }
        )
        self.dense = nn.ModuleDict({f.name: nn.Linear(1, emb_dim) for f in fields if f.kind == "dense"})
        self.defaults = IdEmbedding(len(fields), emb_dim, init_std=0.05)
        layers: list[nn.Module] = []
        width = len(fields) * emb_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*layers)

    @property
    def n_features(self) -> int:
        return len(self.fields)

    def field_vectors(
        self, values: dict[str, torch.Tensor], mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, F, e]``: each feature's embedding, its default where ``mask`` (``BoolTensor[B, F]``) is True.

        ``values``: ``code`` -> ``LongTensor[B]``, ``multi_code`` -> ``LongTensor[B, L]`` (PAD = -1, mean
        pooled), ``dense`` -> ``FloatTensor[B]``."""
        vecs = []
        for f in self.fields:
            x = values[f.name]
            if f.kind == "code":
                vecs.append(self.tables[f.name](x))
            elif f.kind == "multi_code":
                real = (x != PAD).unsqueeze(-1)
                emb = self.tables[f.name](x.clamp(min=0)) * real
                vecs.append(emb.sum(1) / real.sum(1).clamp(min=1))
            else:
                vecs.append(self.dense[f.name](x.unsqueeze(-1)))
        out = torch.stack(vecs, dim=1)
        if mask is not None:
            out = torch.where(mask.unsqueeze(-1), self.defaults.all().unsqueeze(0), out)
        return out

    def forward(self, values: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, d]`` unit vectors."""
        h = self.field_vectors(values, mask)
        return F.normalize(self.mlp(h.flatten(1)), dim=-1)


class StreamingFrequency(nn.Module):
    """The streaming item-frequency estimator of Yi et al. (RecSys 2019, Algorithm 2), without hashing.

    ``A_j``: the step item j was last sampled; ``delta_j``: the smoothed gap between its samplings;
    :math:`p_j = 1 / \\delta_j`.  State is kept in buffers, so it is checkpointed with the model."""

    last: torch.Tensor
    gap: torch.Tensor
    step: torch.Tensor

    def __init__(self, n_items: int, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.register_buffer("last", torch.zeros(n_items, dtype=torch.float64))
        self.register_buffer("gap", torch.full((n_items,), float(n_items), dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, items: torch.Tensor) -> None:
        """Record one batch's sampled items ``LongTensor[B]`` (duplicates count once).

        In data-parallel training (``torchrun``) a step is one batch per process: every process records the
        union of all processes' batches as the step's batch, so that each holds the same estimate (which DDP
        would otherwise overwrite with process 0's alone before each step)."""
        from recsys import distributed

        dp = distributed.current()
        if dp is not None:
            items = dp.concat(items)
        self.step += 1
        seen = items.unique()
        self.gap[seen] = (1 - self.alpha) * self.gap[seen] + self.alpha * (self.step - self.last[seen])
        self.last[seen] = self.step

    def log_probability(self, items: torch.Tensor) -> torch.Tensor:
        """``log p_j`` of items ``LongTensor[B]`` -> ``float32[B]``."""
        return (-self.gap[items].clamp(min=1.0).log()).float()


# ---- sampler ------------------------------------------------------------------------------------------------
class TwoTowerSampler:
    """Main batches (shuffled training samples, as :class:`recsys.sequence_sampling.SequenceSampler`) plus an
    SSL batch per step drawn uniformly, with replacement, from ``catalogue``.

    The epoch's permutation is drawn first and then all SSL batches of the epoch at once, both from
    ``generator``, so ``iterate(start=b)`` reproduces batches ``b, b+1, ...`` exactly (the trainer's resume).
    """

    def __init__(
        self,
        samples: SubsequenceSamples,
        *,
        batch_size: int,
        ssl_batch_size: int,
        catalogue: torch.Tensor,
        generator: torch.Generator,
        ssl: bool = True,
    ) -> None:
        from recsys.sequence_sampling import SequenceSampler

        if ssl and catalogue.numel() < 2:
            raise ValueError(f"the SSL catalogue needs at least 2 items, got {catalogue.numel()}")
        self.inner = SequenceSampler(samples, batch_size=batch_size, generator=generator)
        self.generator = generator
        self.catalogue = catalogue
        self.ssl_batch_size = ssl_batch_size
        self.ssl = ssl

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iterate()

    def iterate(self, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        batches = self.inner.iterate(start, self.generator)
        first = next(batches, None)  # draws the permutation
        n = len(self)
        ssl = None
        if self.ssl:
            draws = torch.randint(self.catalogue.numel(), (n, self.ssl_batch_size), generator=self.generator)
            ssl = self.catalogue[draws]
        for b, batch in enumerate(([first] if first is not None else []) + list(batches), start=start):
            out = {k: batch[k] for k in ("users", "inputs", "targets")}
            if ssl is not None:
                out["ssl_items"] = ssl[b]
            yield out


# ---- the model ----------------------------------------------------------------------------------------------
class TwoTower(HistoryQueries, Recommender):
    """SSL two-tower retrieval (Yao et al., CIKM 2021); the equations: this module's docstring and
    docs/two_tower.md.

    Like :class:`recsys.models.sasrec.SASRec` it needs :meth:`prepare_dataset` (features, histories, samples;
    the towers are built there, since their tables depend on the dataset's features), brings its own sampler
    (:meth:`make_sampler`) and builds queries from the history before the evaluated split
    (:meth:`query_context`).
    """

    config_cls = TwoTowerConfig
    config: TwoTowerConfig
    #: scores are cosines of unit vectors: ``recsys index`` marks the FAISS index normalised
    cosine_scores: ClassVar[bool] = True
    # buffers registered by prepare_dataset
    log_freq: torch.Tensor
    untrained: torch.Tensor

    def __init__(self, n_users: int, n_items: int, config: TwoTowerConfig) -> None:
        super().__init__(n_users, n_items, config)
        self.query_tower: FeatureTower | None = None
        self.item_tower: FeatureTower | None = None
        self.streaming = (
            StreamingFrequency(n_items, config.streaming_alpha) if config.logq == "streaming" else None
        )
        self.histories: dict[str, UserSequences] = {}
        self.train_samples: SubsequenceSamples | None = None
        self.cold_items = np.zeros(0, dtype=np.int64)
        self.mutual_information: np.ndarray | None = None

    # ---- set-up -------------------------------------------------------------------------------------------
    def prepare(self, train: sp.csr_matrix) -> None:
        if train.shape != (self.n_users, self.n_items):
            raise ValueError(
                f"train matrix has shape {train.shape}, model expects {(self.n_users, self.n_items)}"
            )

    def prepare_dataset(self, dataset: Any) -> None:
        """Encode the side features, choose the cold items, build histories, samples and frequencies, compute
        the items' mutual information (for CFM) and build the towers (first call only)."""
        from features.cold_items import choose_cold_items, item_counts

        if (dataset.n_users, dataset.n_items) != (self.n_users, self.n_items):
            raise ValueError(
                f"{dataset.root}: dataset has {dataset.n_users} users x {dataset.n_items} items, model expects "
                f"{self.n_users} x {self.n_items}"
            )
        c = self.config
        spec = dataset.manifest.get("side_features", {})
        self.cold_items = (
            choose_cold_items(self.n_items, c.cold_item_fraction, c.cold_item_seed)
            if c.cold_item_fraction > 0
            else np.zeros(0, dtype=np.int64)
        )
        item_fields = (
            fields_from_spec(dataset.items, spec.get("items", {}), "item_idx", self.n_items)
            if dataset.items is not None
            else [FeatureField("item_idx", "code", self.n_items)]
        )
        user_fields = (
            fields_from_spec(dataset.users, spec.get("users", {}), "user_idx", self.n_users)
            if dataset.users is not None
            else [FeatureField("user_idx", "code", self.n_users)]
        )
        self.item_arrays = feature_arrays(dataset.items, item_fields, "item_idx", self.n_items)
        self.user_arrays = feature_arrays(dataset.users, user_fields, "user_idx", self.n_users)
        self._item_values = {k: torch.from_numpy(v) for k, v in self.item_arrays.values.items()}
        self._user_values = {k: torch.from_numpy(v) for k, v in self.user_arrays.values.items()}
        query_fields = [*user_fields, FeatureField(HISTORY, "multi_code", self.n_items + 1)]

        histories = self._histories(dataset)
        self.set_sequences(histories["valid"], histories)
        assert self.train_samples is not None  # set_sequences has just built them
        counts = np.bincount(self.train_samples.targets, minlength=self.n_items).astype(np.float64)
        self.register_buffer(
            "log_freq",
            torch.from_numpy(np.log(np.maximum(counts, 1.0) / max(counts.sum(), 1.0))).float(),
            persistent=False,
        )
        self.register_buffer("untrained", torch.from_numpy(counts == 0), persistent=False)
        warm = np.setdiff1d(np.arange(self.n_items), self.cold_items)
        self.ssl_catalogue = torch.from_numpy(warm.astype(np.int64))
        self.train_item_counts = item_counts(self._train_frame, self.n_items)

        names = [f.name for f in item_fields]
        if c.ssl_weight > 0 and c.masking == "correlated":
            from features.mutual_info import mutual_information_matrix

            table = (
                dataset.items
                if dataset.items is not None
                else pl.DataFrame({"item_idx": np.arange(self.n_items)})
            )
            table = table.filter(~pl.col("item_idx").is_in(pl.Series(self.cold_items).implode()))
            dense = [f.name for f in item_fields if f.kind == "dense"]
            self.mutual_information = mutual_information_matrix(table, names, dense=dense, bins=c.mi_bins)
        if self.item_tower is None:
            self.query_tower = FeatureTower(query_fields, c.emb_dim, c.hidden, c.dim)
            self.item_tower = FeatureTower(item_fields, c.emb_dim, c.hidden, c.dim)
        multi = [f.name for f in item_fields if f.kind == "multi_code"]
        dropout_differs = bool(multi) and c.value_dropout > 0  # value dropout alone can tell two views apart
        value_dropout_hint = "model.masking=none (value dropout only), " if dropout_differs else ""
        if c.ssl_weight > 0 and c.masking != "none" and len(item_fields) < 2:
            raise ValueError(
                f"{dataset.root}: feature masking needs at least 2 item features, the dataset has {names}; "
                f"set {value_dropout_hint}model.ssl_weight=0"
            )
        if c.ssl_weight > 0 and c.masking == "none" and not dropout_differs:
            raise ValueError(
                f"{dataset.root}: model.ssl_weight > 0 with model.masking=none needs value dropout "
                f"(model.value_dropout > 0, now {c.value_dropout}) on a multi-valued item feature (the dataset "
                f"has {multi or 'none'} among {names}): otherwise the two views are the same item; set "
                "model.masking or model.ssl_weight=0"
            )

    def _histories(self, dataset: Any) -> dict[str, UserSequences]:
        """Per context, every user's items (cold items removed) in time order."""
        from features.cold_items import drop_items

        protocol = dataset.manifest.get("split_protocol", dataset.manifest.get("split", {}).get("protocol"))
        present = [
            s for s in ("train", "valid", "test") if s == "train" or dataset.manifest["counts"].get(s, 0) > 0
        ]
        self._train_frame = drop_items(dataset.train, self.cold_items)
        out = {}
        for ctx, splits in CONTEXT_SPLITS.items():
            # Only a time-ordered protocol puts valid/test after train; otherwise queries use train only.
            use = [s for s in splits if s in present] if protocol in TIME_ORDERED_PROTOCOLS else ["train"]
            frames = []
            for rank, name in enumerate(use):
                df = drop_items(dataset.split(name), self.cold_items)
                ts = pl.col("timestamp") if "timestamp" in df.columns else pl.lit(0, dtype=pl.Int64)
                frames.append(
                    df.select(
                        "user_idx", "item_idx", ts.alias("__ts"), pl.lit(rank, dtype=pl.Int64).alias("__rank")
                    )
                )
            out[ctx] = UserSequences.from_frame(pl.concat(frames), self.n_users, order=("__rank", "__ts"))
        return out

    def set_sequences(self, train: UserSequences, histories: dict[str, UserSequences] | None = None) -> None:
        """Training samples from ``train`` sequences; query histories per context (default ``train``)."""
        self.histories = {ctx: (histories or {}).get(ctx, train) for ctx in CONTEXT_SPLITS}
        samples = dynamic_sliding_samples(train, max_len=self.config.history_len)
        if self.config.train_fraction < 1.0:
            rng = np.random.default_rng(self.config.cold_item_seed + 1)
            keep = np.sort(
                rng.choice(
                    len(samples), size=max(1, round(self.config.train_fraction * len(samples))), replace=False
                )
            )
            samples = SubsequenceSamples(
                samples.sequences, samples.users[keep], samples.starts[keep], samples.ends[keep],
                samples.targets[keep], samples.max_len,
            )  # fmt: skip
        self.train_samples = samples
        if len(self.train_samples) == 0:
            raise ValueError("no training samples: every user has fewer than 2 training interactions")

    def make_sampler(self, train_cfg: Any, generator: torch.Generator) -> TwoTowerSampler:
        _, _, train_samples = self._require_prepared()
        return TwoTowerSampler(
            train_samples,
            batch_size=train_cfg.batch_size,
            ssl_batch_size=self.config.ssl_batch_size,
            catalogue=self.ssl_catalogue,
            generator=generator,
            ssl=self.config.ssl_weight > 0,
        )

    def _require_prepared(self) -> tuple[FeatureTower, FeatureTower, SubsequenceSamples]:
        """The query tower, the item tower and the training samples, which prepare_dataset builds."""
        # the query tower is built with the item tower
        if self.query_tower is None or self.item_tower is None or self.train_samples is None:
            raise RuntimeError("TwoTower.prepare_dataset(dataset) must be called before training or scoring")
        return self.query_tower, self.item_tower, self.train_samples

    # ---- inputs -------------------------------------------------------------------------------------------
    def item_values(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """Item-tower inputs of item indices ``LongTensor[B]``."""
        dev = self._device()
        idx = items.cpu()
        return {k: v[idx].to(dev) for k, v in self._item_values.items()}

    def query_values(self, users: torch.Tensor, history: torch.Tensor) -> dict[str, torch.Tensor]:
        """Query-tower inputs: users ``LongTensor[B]`` and their histories ``LongTensor[B, L]`` (item indices,
        PAD = -1); the history field codes item i as i + 1 (0 = an empty history)."""
        dev = self._device()
        idx = users.cpu()
        out = {k: v[idx].to(dev) for k, v in self._user_values.items()}
        codes = torch.where(history >= 0, history + 1, PAD)
        empty = (codes == PAD).all(dim=1)
        codes[empty, -1] = 0
        out[HISTORY] = codes.to(dev)
        return out

    def _id_mask(self, items: torch.Tensor) -> torch.Tensor:
        """``BoolTensor[B, F]``: the id feature (field 0) masked for items without training interactions."""
        _, item_tower, _ = self._require_prepared()
        mask = torch.zeros(items.shape[0], item_tower.n_features, dtype=torch.bool, device=items.device)
        mask[:, 0] = self.untrained.to(items.device)[items]
        return mask

    # ---- training -----------------------------------------------------------------------------------------
    def main_logits(self, q: torch.Tensor, v: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``[B, B]`` corrected logits :math:`q_i^\\top v_j / \\tau - \\log p_j` (no correction with
        ``logq: none``); other rows' copies of row i's own item are -inf."""
        logits = q @ v.T / self.config.temperature
        if self.config.logq == "frequency":
            logits = logits - self.log_freq[targets].unsqueeze(0)
        elif self.config.logq == "streaming":
            assert self.streaming is not None  # __init__ builds the estimator when logq is "streaming"
            logits = logits - self.streaming.log_probability(targets).unsqueeze(0)
        return logits.masked_fill(_other_rows_with_the_same_item(targets), float("-inf"))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Parts: ``main``, and ``ssl`` (alpha-weighted) / ``spread_out`` (weighted) when switched on."""
        query_tower, item_tower, _ = self._require_prepared()
        c = self.config
        targets = batch["targets"]
        q = query_tower(self.query_values(batch["users"], batch["inputs"]))
        mask = None
        if c.feature_dropout > 0 and self.training:
            mask = feature_dropout_masks(
                len(targets), item_tower.n_features, c.feature_dropout, device=q.device
            )
        v = item_tower(self.item_values(targets), mask)
        if self.streaming is not None and self.training:
            self.streaming.update(targets)
        main = F.cross_entropy(self.main_logits(q, v, targets), torch.arange(len(targets), device=q.device))
        parts = {"main": main}
        if c.ssl_weight > 0:
            parts["ssl"] = c.ssl_weight * self.ssl_loss(batch["ssl_items"])
        if c.spread_out > 0:
            parts["spread_out"] = c.spread_out * spread_out_loss(v, targets)
        # parts holds main, so the sum is a tensor (typed as one, its start value 0 is int)
        return cast(torch.Tensor, sum(parts.values())), parts

    def augmented_views(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views ``[N, d]`` of items ``LongTensor[N]``: feature masking, then value dropout."""
        _, item_tower, _ = self._require_prepared()
        c = self.config
        n, nf = items.shape[0], item_tower.n_features
        dev = self._device()
        m1: torch.Tensor | None
        m2: torch.Tensor | None
        if c.masking == "random":
            m1, m2 = random_complementary_masks(n, nf, device=dev)
        elif c.masking == "random_independent":
            m1, m2 = independent_random_masks(n, nf, device=dev)
        elif c.masking == "correlated":
            if self.mutual_information is None:
                # an IndexError deep in the masking used to say nothing of the cause
                raise RuntimeError(
                    "correlated masking reads the items' mutual information, which prepare_dataset computes "
                    "only when model.ssl_weight > 0"
                )
            m1, m2, _ = correlated_masks(self.mutual_information, n, device=dev)
        else:
            m1 = m2 = None
        values = self.item_values(items)
        views = []
        for m in (m1, m2):
            vals = dict(values)
            if c.value_dropout > 0:
                for f in item_tower.fields:
                    if f.kind == "multi_code":
                        vals[f.name] = value_dropout(vals[f.name], c.value_dropout)
            views.append(item_tower(vals, m))
        return views[0], views[1]

    def ssl_loss(self, items: torch.Tensor) -> torch.Tensor:
        """InfoNCE between the two views of ``items`` ``LongTensor[N]``, temperature ``ssl_temperature``, with
        the other in-batch rows as negatives except those holding the same item (they are not negatives)."""
        z1, z2 = self.augmented_views(items)
        logits = z1 @ z2.T / self.config.ssl_temperature  # [N, N]; N is a mini-batch, plain autograd
        logits = logits.masked_fill(_other_rows_with_the_same_item(items), float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(items), device=logits.device))

    # ---- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def query_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B]`` -> ``[B, d]`` unit vectors from the users' features and recent items."""
        query_tower, _, _ = self._require_prepared()
        history = self.histories[self._context]
        out = []
        for start in range(0, users.shape[0], 4096):
            block = users[start : start + 4096]
            padded = torch.from_numpy(history.padded(block.cpu().numpy(), max_len=self.config.history_len))
            out.append(query_tower(self.query_values(block, padded)))
        return torch.cat(out) if out else torch.zeros(0, self.config.dim, device=self._device())

    @torch.no_grad()
    def item_embeddings(self) -> torch.Tensor:
        """``[I, d]`` unit vectors; items without training interactions (cold) from their features alone."""
        _, item_tower, _ = self._require_prepared()
        items = torch.arange(self.n_items, device=self._device())
        out = [item_tower(self.item_values(block), self._id_mask(block)) for block in items.split(8192)]
        return torch.cat(out)

    @torch.no_grad()
    def embed_new_items(self, table: pl.DataFrame) -> torch.Tensor:
        """Embed items never trained on from their side features: ``table`` has one row per new item with the
        dataset's item feature columns (codes, as :func:`features.new_items.encode_new_items` makes them; an
        unknown code is 0).  The id feature is masked.  Returns ``[n, d]`` unit vectors."""
        _, item_tower, _ = self._require_prepared()
        if len(item_tower.fields) == 1:
            # Only the id, masked: every new item would get the same vector, and a frame without feature
            # columns has no rows to count them by.
            raise ValueError(
                "this model has no item side features (only the id): new items cannot be embedded from "
                "their features; train on data with item features"
            )
        n = table.height
        missing = [f.name for f in item_tower.fields[1:] if f.name not in table.columns]
        if missing:
            raise KeyError(
                f"new items lack the item feature columns {missing}; the model's item features are {self.item_arrays.names[1:]}"
            )
        textual = [
            f.name
            for f in item_tower.fields[1:]
            if table.schema[f.name]
            in (pl.String, pl.Categorical, pl.List(pl.String), pl.List(pl.Categorical))
        ]
        if textual:  # readable labels ("Drama", "1990s") failed inside Polars' cast to codes
            raise TypeError(
                f"new items' columns {textual} hold text; embed_new_items takes the dataset's codes: turn "
                "readable features into codes with features.new_items.encode_new_items first"
            )
        frame = table.select([f.name for f in item_tower.fields[1:]]).with_columns(
            pl.int_range(n, dtype=pl.Int64).alias("item_idx")
        )
        fields = [FeatureField("item_idx", "code", n), *item_tower.fields[1:]]
        arrays = feature_arrays(frame, fields, "item_idx", n)
        dev = self._device()
        values = {k: torch.from_numpy(v).to(dev) for k, v in arrays.values.items()}
        values["item_idx"] = torch.zeros(n, dtype=torch.long, device=dev)  # masked below
        mask = torch.zeros(n, item_tower.n_features, dtype=torch.bool, device=dev)
        mask[:, 0] = True
        return item_tower(values, mask)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{super().extra_repr()}, dim={c.dim}, tau={c.temperature:g}, logq={c.logq}, ssl_weight={c.ssl_weight:g}, "
            f"masking={c.masking}, cold_items={len(self.cold_items)}"
        )


def _other_rows_with_the_same_item(items: torch.Tensor) -> torch.Tensor:
    """``BoolTensor[B, B]``: entry (i, j) is whether row j holds row i's item and j != i. In an in-batch
    softmax such a row is no negative of row i (the main task's targets, and the SSL batch drawn with
    replacement, repeat items)."""
    same = items.unsqueeze(0) == items.unsqueeze(1)
    same.fill_diagonal_(False)
    return same


def spread_out_loss(v: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Spread-out regulariser (Zhang et al., ICCV 2017) over the non-matching pairs of ``v`` ``[B, d]``
    (pairs of different items): :math:`M_1^2 + \\max(0, M_2 - 1/d)`, the mean and mean square of their
    inner products."""
    pairs = items.unsqueeze(0) != items.unsqueeze(1)
    if not bool(pairs.any()):
        return v.sum() * 0.0
    s = (v @ v.T)[pairs]
    m1, m2 = s.mean(), (s * s).mean()
    return m1 * m1 + F.relu(m2 - 1.0 / v.shape[1])

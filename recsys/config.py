"""Experiment configuration: YAML validated by pydantic, every key overridable from the command line.

A config file has five sections plus ``name``, ``seed`` and ``device`` (see ``configs/*.yaml``)::

    name: gowalla-lightgcn        # run name
    seed: 2020
    device: auto                  # auto | cpu | cuda | cuda:N | mps
    data: {...}                   # features.DataConfig
    model: {name: lightgcn, ...}  # the model's own config class, chosen by ``name``
    train: {...}                  # TrainConfig
    eval: {...}                   # EvalConfig
    tracking: {...}               # TrackingConfig

Overrides are ``dotted.key=value`` strings whose value is parsed as YAML (``train.lr=5e-4``,
``eval.ks=[10,20]``).  An unknown key or a wrong type is a :class:`ConfigError` that names the key, what was
expected and, for unknown keys, the allowed ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.config import DataConfig, NoBooleanNumbers


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the key."""


class _Strict(NoBooleanNumbers):
    # attribute docstrings become field descriptions: the config reference (recsys config keys) shows them
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class EarlyStoppingConfig(_Strict):
    """Stop when the monitored validation metric has not improved for ``patience`` evaluations."""

    metric: str = "ndcg@20"
    """Metric on the validation split to monitor, e.g. ``recall@20`` (higher is better)."""
    patience: int = Field(default=10, ge=1)
    """Evaluations without improvement before training stops."""


class TrainConfig(_Strict):
    """How the one :class:`recsys.trainer.Trainer` trains a model."""

    epochs: int = Field(default=100, ge=0)
    """Maximum number of epochs."""
    max_steps: int | None = Field(default=None, ge=1)
    """Optional step budget: training stops after this many optimiser steps, whatever ``epochs`` says."""
    steps_per_epoch: int | None = Field(default=None, ge=1)
    """For ``sampler: users``: optimiser steps per epoch (DCCF uses 40 steps of 10,240 triples); default
    ``ceil(training pairs / batch_size)``, the official LightGCN code's epoch."""
    batch_size: int = Field(default=2048, ge=1)
    """Examples per batch, per process (a data-parallel step takes one batch from each process): BPR triples
    for the ``interactions`` / ``users`` samplers, (history, next item) samples for SASRec, GRU4Rec, DuoRec,
    ICSRec and the two-tower, users for ``sasrec_bce`` and ICLRec; DNIS also sizes its validation batches with
    it."""
    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    """The optimiser's learning rate (its peak, with ``lr_schedule: linear``)."""
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """Weight decay, on top of the models' own L2 terms (which are part of their losses): with ``optimizer:
    adam``, an L2 term added to the gradient; with ``adamw``, the decoupled decay of the weights themselves."""
    optimizer: Literal["adam", "adamw"] = "adam"
    """``adam`` (Kingma & Ba 2015) or ``adamw`` (Adam with decoupled weight decay, Loshchilov & Hutter 2019:
    BERT's, and BERT4Rec's; BERT's spares LayerNorm weights and biases: ``decay_scope: matrices``)."""
    decay_scope: Literal["all", "matrices"] = "all"
    """Which parameters ``weight_decay`` acts on: ``all``; or ``matrices``, the parameters of two or more
    dimensions (weight matrices, embedding tables), sparing the vectors (biases, LayerNorm scales and
    shifts, per-item output biases), as BERT's optimiser does by name (Devlin et al. 2019); unlike BERT's, it
    also spares BERT4Rec's mask vector (one vector here, a row of BERT's decayed embedding table)."""
    max_grad_norm: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Clip the gradients before each step so that their global L2 norm (over all parameters, after the
    data-parallel average) is at most this (``torch.nn.utils.clip_grad_norm_``; BERT clips at 1,
    BERT4Rec at 5); the epoch's mean norm before clipping is logged as ``grad_norm``. Default: no clipping."""
    lr_schedule: Literal["constant", "linear"] = "constant"
    """``constant``: ``lr`` throughout; ``linear``: after the warm-up, ``lr`` falls linearly, to reach 0 just
    after the last step of the budget (``train.max_steps``, else ``epochs`` times the epoch's steps; early
    stopping may end the run before), as BERT4Rec's (``recsys.trainer.lr_factor``)."""
    warmup_steps: int = Field(default=0, ge=0)
    """Steps over which the learning rate rises linearly from 0 to ``lr`` (step ``s`` takes ``lr * s /
    warmup_steps``, from ``s = 1``), before the schedule."""
    sampler: Literal["interactions", "users"] = "interactions"
    """``interactions``: an epoch visits every training pair once; ``users``: users drawn uniformly.  Models
    that bring their own sampler (``make_sampler``: sequence models such as ``sasrec``) do not use it."""
    eval_every: int = Field(default=1, ge=1)
    """Evaluate every N epochs (on the validation split, or the test split when there is none)."""
    early_stopping: EarlyStoppingConfig | None = None
    """Early stopping on a validation metric; needs a non-empty validation split."""
    checkpoint_every: int = Field(default=1, ge=1)
    """Write the resumable checkpoint every N epochs (atomically)."""
    num_threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads; default: torch's choice."""
    progress: bool = True
    """Show progress bars (only on a terminal)."""

    #: Fields added after runs had been fingerprinted: while at their default they stay out of
    #: :meth:`ExperimentConfig.fingerprint`, so that the runs trained before keep their folders and resume.
    FINGERPRINT_SKIPS_DEFAULT: ClassVar[tuple[str, ...]] = (
        "optimizer",
        "lr_schedule",
        "warmup_steps",
        "decay_scope",
        "max_grad_norm",
    )

    @model_validator(mode="after")
    def _steps_need_the_users_sampler(self) -> TrainConfig:
        if self.steps_per_epoch is not None and self.sampler != "users":
            raise ValueError(
                "train.steps_per_epoch applies to train.sampler 'users' only (an 'interactions' epoch visits "
                "every training pair once); set train.sampler: users or remove train.steps_per_epoch"
            )
        return self


class EvalConfig(_Strict):
    """Full-ranking evaluation settings."""

    ks: list[int] = Field(default_factory=lambda: [10, 20])
    """Cut-offs for every metric."""
    block_size: int = Field(default=4096, ge=1)
    """Users scored per block."""

    @field_validator("ks")
    @classmethod
    def _positive_sorted(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(ks))


class TrackingConfig(_Strict):
    """MLflow tracking. The store defaults to an embedded SQLite file under ``$RECSYS_HOME``;
    ``MLFLOW_TRACKING_URI`` or ``uri`` point it elsewhere."""

    enabled: bool = True
    """Track the run in MLflow (false: nothing is logged, and the run cannot be evaluated or indexed by id)."""
    experiment: str = "recsys"
    """The MLflow experiment the run goes to (a resumed run stays in the experiment it started in)."""
    uri: str | None = None
    """The MLflow tracking store; when unset, ``MLFLOW_TRACKING_URI``, or else the embedded store under
    ``$RECSYS_HOME``."""
    log_model: bool = True
    """Log the trained model (config, weights, dataset hash), which every command given ``--run`` loads
    (``evaluate``, ``compare``, ``index``, ``recommend``, ``rerank``, ``serve``, ``explain``), as does
    ``recsys.pipeline.load_run``."""


VALIDATION_KEYS = {
    "random_ratio": "data.split.valid_ratio",
    "temporal": "data.split.valid_temporal_cut (or valid_cut_timestamp)",
    "presplit": "data.split.valid_from_train_ratio",
}
"""The key that makes a validation split, per split protocol (leave_one_out always makes one)."""


def is_computed_metric(metric: str, ks: list[int]) -> bool:
    """Whether the evaluation at cut-offs ``ks`` reports ``metric`` (``NAME@K``)."""
    from eval.metrics import parse_metric

    parsed = parse_metric(metric)
    return parsed is not None and parsed[1] in ks


def computed_metrics_hint(ks: list[int]) -> str:
    """What :func:`is_computed_metric` accepts, for error messages."""
    from eval.metrics import METRICS

    return f"expected NAME@K with NAME one of {', '.join((*METRICS, 'coverage'))} and K one of eval.ks {ks}"


class ExperimentConfig(_Strict):
    """One experiment: data, model, training, evaluation and tracking."""

    name: str = "experiment"
    """The run's name: its MLflow run name, and its folder ``$RECSYS_HOME/runs/<name>-<config fingerprint>``
    (checkpoints)."""
    seed: int = Field(default=0, ge=0, lt=2**63)
    """Seeds torch, numpy and Python, and every epoch's sampler; a signed 64-bit integer's range, >= 0 like
    ``data.split.seed`` (a larger one failed after the data was prepared, without naming the key)."""
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?|mps)$")
    """``auto`` picks CUDA when present, else CPU; or ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    data: DataConfig
    model: dict[str, Any]
    """The model's config; ``name`` picks the class (a built-in or registered model, or one an installed
    package offers: ``recsys.models.model_class``), whose config class validates the rest."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, name: str) -> str:
        # The run folder is $RECSYS_HOME/runs/<name>-<fingerprint>, and a retrain deletes it: a name that is a
        # path ("../x", "a/b", and on Windows "D:x", relative to drive D) would put, and delete, a folder
        # outside the runs folder.
        if not name or name.startswith(".") or re.search(r"[/\\:\x00-\x1f\x7f]", name):
            raise ValueError(
                f"name {name!r} must be one folder name: not empty, no leading '.', no '/', '\\' or ':', "
                "no control characters"
            )
        return name

    @model_validator(mode="after")
    def _monitored_metric_is_computed(self) -> ExperimentConfig:
        # checked here, not after the first (possibly hour-long) epoch
        es = self.train.early_stopping
        split = self.data.split
        if es is not None and not self.makes_validation_split():
            raise ValueError(
                f"train.early_stopping needs a validation split, but data.split (protocol {split.protocol!r}) "
                f"makes none: set {VALIDATION_KEYS[split.protocol]}, or remove train.early_stopping"
            )
        if es is not None and not is_computed_metric(es.metric, self.eval.ks):
            raise ValueError(
                f"train.early_stopping.metric {es.metric!r} is not computed: {computed_metrics_hint(self.eval.ks)}"
            )
        return self

    def selection_metric(self) -> str:
        """The validation metric that picks the weights to test (and a sweep's run):
        ``train.early_stopping.metric``, else ``ndcg@max(eval.ks)``."""
        es = self.train.early_stopping
        return es.metric if es else f"ndcg@{max(self.eval.ks)}"

    def makes_validation_split(self) -> bool:
        """Whether ``data.split`` holds out a validation split (``VALIDATION_KEYS`` names the key otherwise;
        leave-one-out always does). It may still come out empty, e.g. when no user has enough interactions."""
        split = self.data.split
        unset = {
            "random_ratio": split.valid_ratio == 0,
            "temporal": split.valid_temporal_cut is None and split.valid_cut_timestamp is None,
            "presplit": split.valid_from_train_ratio == 0,
        }
        return not unset.get(split.protocol, False)

    def model_config_obj(self):
        """The model section validated by the chosen model's own config class."""
        from recsys.models import model_class

        return model_class(self.model["name"]).config_cls.model_validate(self.model)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self, exclude: tuple[str, ...] = ("tracking",)) -> str:
        """A short hash of the resolved config (without the tracking section), naming run folders.

        Settings that change how fast a run goes, not what it computes (``train.num_threads``,
        ``train.progress``), are left out, so that a run can be resumed with another thread count. (Another
        thread count may sum floats in another order: the resumed run is then the same up to rounding, not
        bit for bit.) ``train.checkpoint_every`` and ``eval.block_size`` are such settings too (resuming is
        exact from any checkpoint; blocks only group the users scored at once); they are hashed at their
        defaults, which keeps the fingerprints of runs from before they were."""
        payload = {k: v for k, v in self.to_dict().items() if k not in exclude}
        if isinstance(payload.get("train"), dict):
            fields = TrainConfig.model_fields
            payload["train"] = {
                k: v
                for k, v in payload["train"].items()
                if k not in ("num_threads", "progress")
                and not (k in TrainConfig.FINGERPRINT_SKIPS_DEFAULT and v == fields[k].default)
            }
        for section, model, key in (
            ("train", TrainConfig, "checkpoint_every"),
            ("eval", EvalConfig, "block_size"),
        ):
            if isinstance(payload.get(section), dict) and key in payload[section]:
                payload[section] = {**payload[section], key: model.model_fields[key].default}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 integers and booleans, and no repeated keys.

    YAML 1.1 (PyYAML's default) reads ``010`` as octal 8, ``1:30`` as 90 (base 60) and ``on`` / ``no`` as
    booleans, and lets a repeated key replace the first silently (a second ``train:`` section would drop
    every key of the first).  Here ``010`` is 10, ``1:30`` and ``on`` are text (pydantic still reads ``on``
    as true for a boolean field), and a repeated key is an error naming its line."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # resolve merge keys (<<: *anchor) first, as the safe loader does
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # a list or mapping as a key
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a single value, got {key!r}", key_node.start_mark
                ) from None
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} repeated (first on line {seen[key]})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


# Booleans and integers as in YAML 1.2; floats as PyYAML reads them (a dot needed: 1e3 stays the text "1e3",
# which a number field still reads as 1000.0, and a text field keeps as written).
_YAML11_SCALARS = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML11_SCALARS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_INT_1_2 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_1_2, list("-+0123456789"))


def _int_1_2(loader: _Loader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0) if text[:2] in ("0o", "0x") else int(text)


_Loader.add_constructor("tag:yaml.org,2002:int", _int_1_2)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML with :class:`_Loader`; a syntax error is a one-line :class:`ConfigError` naming the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}{where}: not valid YAML: {problem}") from None


_YAML_COMMENT = re.compile(r"(?:^|\s)#")  # where YAML starts a comment: at the start or after a blank


def _json_collection(text: str) -> tuple[Any] | None:
    """``(value,)`` when ``text`` is a JSON list or object (strict: no NaN, no repeated key), else None. JSON
    is YAML, read the same, except that a " #" inside one of its strings is no comment."""

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) < len(pairs):
            raise ValueError("a repeated key")  # left to YAML, whose error names it
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise ValueError(name)

    if not text.lstrip().startswith(("[", "{")):
        return None
    try:
        return (json.loads(text, object_pairs_hook=no_repeats, parse_constant=no_constant),)
    except ValueError:
        return None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Set ``a.b.c=value`` overrides (value parsed as YAML) into a nested dict, returning a new dict."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=0.001")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: expected a key like train.lr (no empty part)")
        value: Any
        if (as_json := _json_collection(text)) is not None:
            value = as_json[0]  # a list or mapping in JSON (a sweep's points): a "#" in it is data
        elif _YAML_COMMENT.search(text) and not text.lstrip().startswith(("'", '"')):
            value = text  # YAML would drop the rest as a comment: data.separator=# is the text "#"
        else:
            value = parse_yaml(text, f"override {key}") if text.strip() else None
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override {key}: {where} is a value ({child!r}), not a section")
            node = child
        node[parts[-1]] = value
    return out


def _format_errors(exc: ValidationError, source: str, prefix: str, model_cls: type[BaseModel]) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join([prefix, *loc] if prefix else loc)
        msg = err["msg"]
        if err["type"] == "value_error":  # our validators' messages name the keys they check
            msg = msg.removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model_cls, loc[:-1])
            msg = f"unknown key; allowed keys here: {', '.join(allowed)}" if allowed else "unknown key"
        elif (
            "input" in err
            and err["type"] != "missing"
            and not (err["type"] == "value_error" and isinstance(err["input"], dict))
        ):
            msg = f"{msg} (got {err['input']!r})"  # a section checked across its keys is not repeated whole
        lines.append(f"  {key}: {msg}" if key else f"  {msg}")
    return "\n".join(lines)


def _allowed_keys(model_cls: type[BaseModel], path: list[str]) -> list[str]:
    """Field names of the (nested) pydantic model at ``path``, for 'unknown key' messages."""
    cls: Any = model_cls
    for part in path:
        fields = getattr(cls, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        # Optional[X] / X | None: take the BaseModel member.
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                cls = cand
                break
        else:
            return []
    return sorted(getattr(cls, "model_fields", {}))


def validate_config(raw: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Validate a raw dict into an :class:`ExperimentConfig`, including the model section."""
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config ({source}): expected a mapping at the top level")
    try:
        cfg = ExperimentConfig.model_validate(raw, context={"source": source})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, "", ExperimentConfig)) from None
    from recsys.models import known_model_names, model_class

    name = cfg.model.get("name")
    try:
        model_cls = model_class(name).config_cls if isinstance(name, str) else None
    except KeyError:
        model_cls = None
    except ImportError as exc:  # an installed package's model that does not load
        raise ConfigError(f"invalid config ({source}):\n  model.name: {exc}") from None
    if model_cls is None:
        raise ConfigError(
            f"invalid config ({source}):\n  model.name: unknown model {name!r}; "
            f"allowed values: {', '.join(known_model_names())}"
        )
    try:
        model_cfg = model_cls.model_validate(cfg.model)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, "model", model_cls)) from None
    # Store the model section resolved (defaults filled in) so that runs log every value used.
    cfg.model = model_cfg.model_dump(mode="json")
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML config, apply ``key=value`` overrides, validate."""
    path = Path(path).expanduser()
    raw = _read_raw(path, overrides)
    try:
        cfg = validate_config(raw, source=str(path))
    except ConfigError as exc:
        raise ConfigError(_name_overrides(str(exc), overrides)) from None
    return cfg


def _name_overrides(message: str, overrides: list[str] | tuple[str, ...]) -> str:
    """``message`` (a header, then ``  key: what is wrong`` lines) with each line whose key a command-line
    override set saying so: the header names the YAML file, which may not hold the value at all. A line about
    a whole section or the whole config (``data: ...``, ``train.early_stopping needs ...``) names the
    overrides whose key it mentions (the full key, or the part below the line's key)."""
    keys = [(o.split("=", 1)[0].strip(), o) for o in overrides]
    lines = message.split("\n")
    for n, line in enumerate(lines[1:], start=1):
        if not line.startswith("  "):
            continue
        key = line.strip().split(":", 1)[0]
        setters = [o for k, o in keys if key == k or key.startswith(k + ".")]
        if setters:
            lines[n] = f"{line} [set on the command line: {setters[-1]!r}]"
            continue
        named = [
            o
            for k, o in keys
            if re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", line)
            or (k.startswith(key + ".") and re.search(rf"(?<!\w){re.escape(k[len(key) + 1 :])}(?!\w)", line))
        ]
        if named:
            lines[n] = f"{line} [the command line set a value it names: {', '.join(map(repr, named))}]"
    return "\n".join(lines)


def load_data_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DataConfig:
    """Only the ``data`` section of a config file (with overrides), validated: what ``recsys data prepare``
    needs, so that a file without a ``model`` section (or with one still being written) can prepare data."""
    path = Path(path).expanduser()
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if "=" in override and key != "data" and not key.startswith("data."):  # no '=': apply_overrides says
            # only the data section is read here: another section's override would be ignored, silently
            raise ConfigError(
                f"override {override!r}: only data.* keys apply when preparing data (got key {key!r})"
            )
    raw = _read_raw(path, overrides)
    if "data" not in raw:
        raise ConfigError(f"invalid config ({path}):\n  data: Field required")
    try:
        data = DataConfig.model_validate(raw["data"], context={"source": str(path)})
    except ValidationError as exc:
        raise ConfigError(
            _name_overrides(_format_errors(exc, str(path), "data", DataConfig), overrides)
        ) from None
    return data


def _read_raw(path: Path, overrides: list[str] | tuple[str, ...]) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: expected UTF-8 text, got byte {exc.object[exc.start]:#04x}") from None
    raw = parse_yaml(text, str(path)) or {}
    if not isinstance(raw, dict):  # before the overrides, which index into it
        raise ConfigError(
            f"invalid config ({path}): expected a mapping at the top level, got a {type(raw).__name__}"
        )
    return apply_overrides(raw, overrides)


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting also the strings :class:`_Loader` would read as integers: ``0o17`` is a
    YAML 1.2 integer that YAML 1.1 reads as text, so the plain dumper wrote it bare. A dumped config loads back
    the same."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:int", _INT_1_2, list("-+0123456789"))


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False)

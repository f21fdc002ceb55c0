"""A grid of configs trained one after another, the best chosen on the validation split, and only the chosen
one's test metrics reported.

Each point of the grid is an ordinary run (``recsys.pipeline.train_experiment``: its own run folder and MLflow
run), the config file with the sweep's fixed overrides and that point's values. Every run is scored on the
validation split with the same full-ranking evaluation (for trained models, the weights validation picked;
closed-form models such as RP3beta too, which have no epochs), and the highest validation value of one metric
chooses. Choosing by test metrics would make the test split a second validation split and report an optimistic
number; the other runs' test metrics stay in MLflow for whoever needs them, not in the report.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.config import ConfigError, ExperimentConfig, load_config, parse_yaml


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid: its values (``{key: value}``, as the validated config holds them), its MLflow run
    id (None without tracking), its run folder and its validation metrics."""

    values: dict[str, Any]
    run_id: str | None
    run_dir: str
    valid: dict[str, float]


@dataclass
class SweepResult:
    """Every run, the metric that chose, the chosen run's index in ``runs`` and its test metrics."""

    metric: str
    runs: list[SweepRun] = field(default_factory=list)
    chosen: int = -1
    test: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "runs": [
                {"values": r.values, "run_id": r.run_id, "run_dir": r.run_dir, "valid": r.valid}
                for r in self.runs
            ],
            "chosen": self.chosen,
            "test": self.test,
        }


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["model.dim=[32, 64]", "train.lr=[1e-3, 5e-3]"]`` -> ``{"model.dim": [32, 64], ...}`` (YAML lists).

    Raises:
        ConfigError: an item is not ``KEY=[V1, ...]`` with at least one value, or a key is given twice.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        values = parse_yaml(text, f"--grid {key}") if eq and text.strip() else None
        if not key or not isinstance(values, list) or not values:
            raise ConfigError(f"--grid {item!r}: expected KEY=[V1, V2, ...], e.g. 'model.dim=[32, 64]'")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice")
        grid[key] = values
    return grid


def point_overrides(values: dict[str, Any]) -> list[str]:
    """A point as ``key=value`` overrides, each value as JSON (which is YAML, read back as given)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def describe(values: dict[str, Any]) -> str:
    """A point as one line of overrides, for messages and tags."""
    return " ".join(point_overrides(values))


def _drops(later: str, earlier: str) -> bool:
    """Whether setting ``later`` after ``earlier`` loses ``earlier``: the same key, or a section holding it
    (``model={...}`` after ``model.dim=8``). A key inside an earlier section (``model.dim`` after
    ``model={...}``) is set within it, which is fine."""
    return later == earlier or earlier.startswith(later + ".")


def _value_at(tree: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` of a nested dict (``model.dim`` -> ``tree["model"]["dim"]``)."""
    for part in key.split("."):
        tree = tree[part]
    return tree


def grid_configs(
    config: str | Path, grid: dict[str, list[Any]], overrides: list[str] | tuple[str, ...] = ()
) -> list[tuple[dict[str, Any], ExperimentConfig]]:
    """Every point of ``grid`` (the cartesian product, in the order given) with its validated config; all are
    checked before anything trains, so a bad point fails in seconds, not after the first runs. A point's values
    are reported as its validated config holds them (``1e-3`` is the number 0.001).

    A sweep compares models on one validation split, so every point must prepare the same data; and two points
    that resolve to the same config would share one run folder (one would resume or delete the other).

    Raises:
        ConfigError: a grid key would replace a fixed override or an earlier grid key (the same key, or a
            section holding it), a point's config does not validate, points differ in ``data``, or two points
            are the same experiment.
    """
    fixed = [o.partition("=")[0].strip() for o in overrides]
    keys = list(grid)
    for i, key in enumerate(keys):  # the fixed overrides apply first, then the grid keys in order
        clash = next((k for k in fixed + keys[:i] if _drops(key, k)), None)
        if clash is not None:
            what = "--grid key" if clash in keys[:i] else "fixed override"
            raise ConfigError(
                f"--grid {key} would replace the {what} {clash} (the same key, or a section holding it); give "
                "each value once"
            )
    points: list[tuple[dict[str, Any], ExperimentConfig]] = []
    seen: dict[str, str] = {}
    for combo in itertools.product(*grid.values()):
        point = dict(zip(keys, combo, strict=True))
        given = describe(point)
        try:
            cfg = load_config(config, [*overrides, *point_overrides(point)])
        except ConfigError as exc:
            raise ConfigError(f"grid point {given}: {exc}") from None
        if points and cfg.data != points[0][1].data:
            raise ConfigError(
                f"grid point {given} prepares other data than {describe(points[0][0])}: a sweep chooses on one "
                "validation split (another split or filter would be chosen for being easier); sweep data "
                "settings in separate sweeps"
            )
        fingerprint = cfg.fingerprint()
        if fingerprint in seen:
            raise ConfigError(
                f"grid points {seen[fingerprint]} and {given} are the same experiment (one run folder); "
                "the run fingerprint leaves out tracking, train.num_threads, train.progress, "
                "train.checkpoint_every and eval.block_size (they change how fast a run goes, not its result)"
            )
        seen[fingerprint] = given
        tree = cfg.to_dict()
        points.append(({k: _value_at(tree, k) for k in keys}, cfg))
    return points


def logged_validation(run: Any) -> dict[str, float] | None:
    """The validation metrics the trainer computed for the weights a run tested (its best epoch's when
    validation chose them, else its last epoch's), from the run's history; None when it has none for that
    epoch (closed-form models train no epochs). The same evaluation of the same weights as scoring the
    validation split again, without the extra pass."""
    history = getattr(run, "history", None) or []
    if not history:
        return None
    best_epoch = getattr(run, "best_epoch", -1)
    epoch = best_epoch if best_epoch >= 0 else history[-1]["epoch"]
    entry: dict[str, float] = next((h for h in history if h["epoch"] == epoch), {})
    metrics = {k.removeprefix("valid/"): v for k, v in entry.items() if k.startswith("valid/")}
    return metrics or None


def run_sweep(
    points: list[tuple[dict[str, Any], ExperimentConfig]],
    *,
    metric: str | None = None,
    resume: bool = False,
    echo: Callable[..., None] = print,
) -> SweepResult:
    """Train every point, score each on the validation split, choose the highest ``metric`` (default: the
    first config's :meth:`~recsys.config.ExperimentConfig.selection_metric`, the metric the trainer picks
    weights by), and report the chosen run's test metrics only. ``resume`` continues each run's checkpoint
    (``recsys train --resume``): a sweep stopped half-way restarts where it stopped. MLflow runs are tagged
    ``sweep`` (one id per call), ``sweep.point`` and, on the chosen one, ``sweep.chosen``.

    Raises:
        ValueError: no validation split, ``metric`` not computed at ``eval.ks``, or a data-parallel launch
            (each point would need all processes).
    """
    import uuid

    from eval import evaluate_model
    from recsys import distributed
    from recsys.config import VALIDATION_KEYS, computed_metrics_hint, is_computed_metric
    from recsys.pipeline import train_experiment
    from recsys.tracking import tag_run

    if not points:
        raise ValueError("a sweep needs at least one grid point")
    if distributed.launched_world_size() > 1:
        raise ValueError(
            "a sweep runs in one process: launch it without torchrun (each point is a recsys train)"
        )
    metric = metric or points[0][1].selection_metric()
    for values, cfg in points:  # refused before the first run trains
        if not cfg.makes_validation_split():
            key = VALIDATION_KEYS[cfg.data.split.protocol]
            raise ValueError(
                f"grid point {describe(values)}: a sweep chooses on the validation split, and data.split makes "
                f"none: set {key}"
            )
        if not is_computed_metric(metric, cfg.eval.ks):
            raise ValueError(
                f"grid point {describe(values)}: the sweep's metric {metric!r} is not computed: "
                f"{computed_metrics_hint(cfg.eval.ks)}"
            )
    result = SweepResult(metric)
    sweep_id = uuid.uuid4().hex[:12]
    best = float("-inf")
    for n, (values, cfg) in enumerate(points, start=1):
        echo(f"sweep: run {n} of {len(points)}: {describe(values)}")
        run = train_experiment(cfg, resume=resume, echo=echo)
        assert run is not None  # one process (refused above otherwise): process 0 returns the result
        valid = logged_validation(run)
        if valid is None:  # no validation while training (closed-form models): score it now
            valid = evaluate_model(
                run.model, run.dataset, "valid", ks=cfg.eval.ks, block_size=cfg.eval.block_size
            )
        result.runs.append(SweepRun(values, run.run_id, str(run.run_dir), valid))
        if run.run_id:  # the evidence for the choice, in the store beside the run's own metrics
            tags = {"sweep": sweep_id, "sweep.point": describe(values)}
            tag_run(run.run_id, tags, cfg.tracking.uri, metrics={f"sweep_valid/{metric}": valid[metric]})
        if valid[metric] > best:  # ties: the earlier point
            best, result.chosen, result.test = valid[metric], n - 1, run.test_metrics
        echo(f"sweep: run {n}: valid {metric} {valid[metric]:.4f}")
        del run  # the next point's model is built while this name still holds this one (EASE: 6.7 GB each)
    if result.chosen < 0:  # every score NaN: nothing to choose
        raise ValueError(f"no run has a validation {metric} to choose by (all NaN)")
    chosen = result.runs[result.chosen]
    if chosen.run_id:
        tag_run(chosen.run_id, {"sweep.chosen": "true"}, points[result.chosen][1].tracking.uri)
    return result

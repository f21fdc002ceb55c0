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
    """One point of the grid: its values (``{key: value}``), run id and validation metrics."""

    values: dict[str, Any]
    run_id: str | None
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
            "runs": [{"values": r.values, "run_id": r.run_id, "valid": r.valid} for r in self.runs],
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


def grid_configs(
    config: str | Path, grid: dict[str, list[Any]], overrides: list[str] | tuple[str, ...] = ()
) -> list[tuple[dict[str, Any], ExperimentConfig]]:
    """Every point of ``grid`` (the cartesian product, in the order given) with its validated config; all are
    validated before anything trains, so a bad value fails in seconds, not after the first runs.

    Raises:
        ConfigError: a grid key is also a fixed override, or a point's config does not validate (the message
        names the point).
    """
    fixed = {o.partition("=")[0].strip() for o in overrides}
    both = sorted(fixed & set(grid))
    if both:
        raise ConfigError(f"{both[0]} is both a --grid key and a fixed override; give it once")
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        point = [f"{k}={json.dumps(v)}" for k, v in values.items()]  # JSON is YAML: read back as given
        try:
            cfg = load_config(config, [*overrides, *point])
        except ConfigError as exc:
            raise ConfigError(f"grid point {' '.join(point)}: {exc}") from None
        points.append((values, cfg))
    return points


def run_sweep(
    points: list[tuple[dict[str, Any], ExperimentConfig]],
    *,
    metric: str | None = None,
    resume: bool = False,
    echo: Callable[..., None] = print,
) -> SweepResult:
    """Train every point, score each on the validation split, choose the highest ``metric`` (default: the
    first config's ``train.early_stopping.metric``, else ``ndcg@max(eval.ks)``, the metric the trainer picks
    weights by), and test only the chosen run. ``resume`` continues each run's checkpoint
    (``recsys train --resume``): a sweep stopped half-way restarts where it stopped.

    Raises:
        ValueError: the data has no validation split, or ``metric`` is not computed at ``eval.ks``.
    """
    from eval import evaluate_model
    from recsys.config import VALIDATION_KEYS, computed_metrics_hint, is_computed_metric
    from recsys.pipeline import train_experiment

    first = points[0][1]
    es = first.train.early_stopping
    metric = metric or (es.metric if es else f"ndcg@{max(first.eval.ks)}")
    for values, cfg in points:  # refused before the first run trains
        where = f"grid point {' '.join(f'{k}={json.dumps(v)}' for k, v in values.items())}"
        if not cfg.makes_validation_split():
            key = VALIDATION_KEYS[cfg.data.split.protocol]
            raise ValueError(
                f"{where}: a sweep chooses on the validation split, and data.split makes none: set {key}"
            )
        if not is_computed_metric(metric, cfg.eval.ks):
            raise ValueError(
                f"{where}: the sweep's metric {metric!r} is not computed: {computed_metrics_hint(cfg.eval.ks)}"
            )
    result = SweepResult(metric)
    best = float("-inf")
    for n, (values, cfg) in enumerate(points, start=1):
        shown = " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
        echo(f"sweep: run {n} of {len(points)}: {shown}")
        run = train_experiment(cfg, resume=resume, echo=echo)
        assert run is not None  # one process: process 0 returns the result
        valid = evaluate_model(
            run.model, run.dataset, "valid", ks=cfg.eval.ks, block_size=cfg.eval.block_size
        )
        result.runs.append(SweepRun(values, run.run_id, valid))
        if valid[metric] > best:  # ties: the earlier point
            best, result.chosen, result.test = valid[metric], n - 1, run.test_metrics
        echo(f"sweep: run {n}: valid {metric} {valid[metric]:.4f}")
    return result

"""`recsys sweep`: a grid of runs, chosen on validation, only the chosen one tested (recsys/sweep.py)."""

from __future__ import annotations

import json

import pytest
import yaml

from recsys.cli import main
from recsys.config import ConfigError
from recsys.sweep import grid_configs, parse_grid
from tests.test_trainer import make_cfg, write_synthetic_interactions


def test_parse_grid():
    assert parse_grid(["model.dim=[4, 8]", "train.lr = [0.01]"]) == {"model.dim": [4, 8], "train.lr": [0.01]}
    for bad in ("model.dim=8", "model.dim=[]", "model.dim", "=[1]"):
        with pytest.raises(ConfigError, match="expected KEY=\\[V1, V2, ...\\]"):
            parse_grid([bad])
    with pytest.raises(ConfigError, match="model.dim is given twice"):
        parse_grid(["model.dim=[4]", "model.dim=[8]"])


@pytest.fixture
def config(tmp_path):
    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=2)
    raw["tracking"] = {"experiment": "sweep"}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_point_is_validated_before_anything_trains(config):
    points = grid_configs(config, parse_grid(["model.dim=[4, 8]", "model.reg=[0, 0.1]"]), ["train.epochs=1"])
    assert [values for values, _ in points] == [
        {"model.dim": 4, "model.reg": 0}, {"model.dim": 4, "model.reg": 0.1},
        {"model.dim": 8, "model.reg": 0}, {"model.dim": 8, "model.reg": 0.1},
    ]  # fmt: skip
    assert [(c.model["dim"], c.model["reg"], c.train.epochs) for _, c in points][-1] == (8, 0.1, 1)
    with pytest.raises(
        ConfigError, match=r"(?s)grid point model.dim=-1: invalid config .*model.dim: Input should"
    ):
        grid_configs(config, parse_grid(["model.dim=[4, -1]"]))
    with pytest.raises(ConfigError, match="model.dim is both a --grid key and a fixed override"):
        grid_configs(config, parse_grid(["model.dim=[4]"]), ["model.dim=8"])


def test_a_sweep_chooses_on_validation_and_tests_only_the_chosen_run(config, capsys):
    import mlflow

    grid = ["--grid", "model.dim=[2, 16]", "--grid", "train.lr=[0.001, 0.05]"]
    assert main(["sweep", "-c", str(config), *grid, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    runs, metric = out["runs"], out["metric"]
    assert (
        metric == "ndcg@10" and len(runs) == 4
    )  # no early stopping: ndcg at the largest eval.ks, as the trainer
    scores = [r["valid"][metric] for r in runs]
    assert out["chosen"] == scores.index(max(scores))
    chosen = runs[out["chosen"]]
    logged = mlflow.get_run(chosen["run_id"]).data.metrics
    assert out["test"]["ndcg@10"] == pytest.approx(logged["test_final/ndcg_at_10"], abs=1e-12)
    for r in runs:  # the validation score of the weights validation picked, as each run logged it
        assert r["valid"][metric] == pytest.approx(
            mlflow.get_run(r["run_id"]).data.metrics["best_valid_metric"]
        )
    assert {json.dumps(r["values"], sort_keys=True) for r in runs} == {
        json.dumps({"model.dim": d, "train.lr": lr}, sort_keys=True) for d in (2, 16) for lr in (0.001, 0.05)
    }


def test_a_closed_form_model_is_swept_too_and_the_table_marks_the_choice(config, capsys):
    # RP3beta has no epochs, so no run-time validation: the sweep scores the validation split itself
    args = ["sweep", "-c", str(config), "model={name: rp3beta}", "--grid", "model.beta=[0.0, 0.5]"]
    assert main([*args, "--metric", "hit@5"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("  0.")]
    assert len(rows) == 2 and sum("<- chosen" in row for row in rows) == 1
    assert "chosen on the validation split by hit@5" in out
    assert "test metrics of the chosen run only (model.beta=" in out


def test_a_sweep_without_a_validation_split_or_metric_is_refused_before_training(
    config, capsys, _isolated_home
):
    assert main(["sweep", "-c", str(config), "data.split.valid_ratio=0", "--grid", "model.dim=[4]"]) == 2
    assert (
        "a sweep chooses on the validation split, and data.split makes none: set data.split.valid_ratio"
        in (capsys.readouterr().err)
    )
    assert main(["sweep", "-c", str(config), "--grid", "model.dim=[4]", "--metric", "ndcg@50"]) == 2
    assert "the sweep's metric 'ndcg@50' is not computed" in capsys.readouterr().err
    assert not (_isolated_home / "runs").exists()  # nothing trained

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
    with pytest.raises(ConfigError, match="--grid model.dim would replace the fixed override model.dim"):
        grid_configs(config, parse_grid(["model.dim=[4]"]), ["model.dim=8"])
    # values as the validated config holds them: YAML reads 1e-3 as text, the config as the number
    assert grid_configs(config, parse_grid(["train.lr=[1e-3]"]))[0][0] == {"train.lr": 0.001}


def test_a_key_that_would_silently_drop_another_is_refused(config):
    # a section given after a key inside it replaces the key (train.epochs=1 was lost to 'train=[{lr: ...}]')
    with pytest.raises(ConfigError, match="--grid train would replace the fixed override train.epochs"):
        grid_configs(config, parse_grid(["train=[{lr: 0.01}]"]), ["train.epochs=1"])
    with pytest.raises(ConfigError, match="--grid model would replace the --grid key model.dim"):
        grid_configs(config, parse_grid(["model.dim=[4]", "model=[{name: mf_bpr}]"]))
    # a key inside an earlier section is set within it: fine
    points = grid_configs(config, parse_grid(["model=[{name: mf_bpr}]", "model.dim=[4, 8]"]))
    assert [c.model["dim"] for _, c in points] == [4, 8]
    points = grid_configs(config, parse_grid(["model.beta=[0.0, 0.5]"]), ["model={name: rp3beta}"])
    assert [c.model["beta"] for _, c in points] == [0.0, 0.5]


def test_points_on_other_data_or_the_same_experiment_are_refused(config):
    # another split seed holds out other items: the easiest split would be chosen
    with pytest.raises(
        ConfigError, match="prepares other data than data.split.seed=1: a sweep chooses on one"
    ):
        grid_configs(config, parse_grid(["data.split.seed=[1, 2]"]))
    # 12 and 12.0 are one config: one run folder, which the second point would resume or delete
    with pytest.raises(
        ConfigError, match="grid points model.dim=12 and model.dim=12.0 are the same experiment"
    ):
        grid_configs(config, parse_grid(["model.dim=[12, 12.0]"]))
    # points differing only in what the fingerprint leaves out: the message names that setting too
    with pytest.raises(ConfigError, match=r"leaves out .*train\.checkpoint_every and eval\.block_size"):
        grid_configs(config, parse_grid(["eval.block_size=[64, 128]"]))


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
    # MLflow can tell the sweep's runs, their points and its choice apart
    tags = [mlflow.get_run(r["run_id"]).data.tags for r in runs]
    assert len({t["sweep"] for t in tags}) == 1
    assert [t["sweep.point"] for t in tags] == [
        f"model.dim={d} train.lr={lr}" for d in (2, 16) for lr in (0.001, 0.05)
    ]
    assert [t.get("sweep.chosen") for t in tags] == ["true" if i == out["chosen"] else None for i in range(4)]
    for r in runs:  # the score the sweep chose by is in the store
        logged = mlflow.get_run(r["run_id"]).data.metrics["sweep_valid/ndcg_at_10"]
        assert logged == pytest.approx(r["valid"][metric], abs=1e-12)
    assert {json.dumps(r["values"], sort_keys=True) for r in runs} == {
        json.dumps({"model.dim": d, "train.lr": lr}, sort_keys=True) for d in (2, 16) for lr in (0.001, 0.05)
    }


def test_the_sweep_reuses_the_validation_the_trainer_computed_for_the_tested_weights(config, monkeypatch):
    """Each run's validation score is the trainer's, for the weights it tested: equal to scoring them again,
    which the sweep no longer does (it was one more pass over the validation users per run)."""
    import eval as evaluation
    from recsys.pipeline import load_run
    from recsys.sweep import run_sweep

    real, splits = evaluation.evaluate_model, []

    def counted(model, dataset, split, **kw):
        splits.append(split)
        return real(model, dataset, split, **kw)

    monkeypatch.setattr(evaluation, "evaluate_model", counted)
    stopping = ["train.epochs=3", "train.early_stopping={metric: ndcg@10, patience: 1}"]
    points = grid_configs(config, parse_grid(["train.lr=[0.001, 0.5]"]), stopping)
    result = run_sweep(points, echo=lambda *a: None)
    epochs = [mlflow_metric(r.run_id, "epochs_run") for r in result.runs]
    assert splits.count("valid") == sum(epochs)  # the trainer's, once per epoch; none more
    monkeypatch.setattr(evaluation, "evaluate_model", real)
    for r, (_, cfg) in zip(result.runs, points, strict=True):
        run = load_run(r.run_id)
        again = real(run.model, run.dataset, "valid", ks=cfg.eval.ks, block_size=cfg.eval.block_size)
        assert r.valid == again


def mlflow_metric(run_id: str, key: str) -> float:
    import mlflow

    return mlflow.get_run(run_id).data.metrics[key]


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


def test_the_chosen_run_is_the_best_on_validation_not_on_test(config, monkeypatch):
    from recsys.sweep import run_sweep

    # the stand-in tests point n to ndcg@10 = n: test's best is the last point, validation's the middle one
    _fake_training(monkeypatch, {4: {"ndcg@10": 0.1}, 8: {"ndcg@10": 0.3}, 16: {"ndcg@10": 0.2}})
    result = run_sweep(grid_configs(config, parse_grid(["model.dim=[4, 8, 16]"])), echo=lambda *a: None)
    assert result.chosen == 1 and result.test == {"ndcg@10": 1}


def test_without_tracking_the_table_names_run_folders(config, monkeypatch, capsys):
    _fake_training(monkeypatch, {4: {"ndcg@10": 0.1}, 8: {"ndcg@10": 0.3}}, tracked=False)
    assert main(["sweep", "-c", str(config), "--grid", "model.dim=[4, 8]"]) == 0
    out = capsys.readouterr().out
    assert "/runs/1  <- chosen" in out and "tracking is off" in out


def test_a_sweep_refuses_a_data_parallel_launch(config, monkeypatch):
    from recsys import distributed
    from recsys.sweep import run_sweep

    monkeypatch.setattr(distributed, "launched_world_size", lambda: 2)
    with pytest.raises(ValueError, match="launch it without torchrun"):
        run_sweep(grid_configs(config, parse_grid(["model.dim=[4]"])), echo=lambda *a: None)


def test_an_interrupted_sweep_says_how_to_continue_it():
    import shlex

    from recsys.cli import _resume_hint, build_parser

    for extra in ([], ["--json", "--metric", "hit@5"]):
        argv = ["sweep", "--config", "c.yaml", "--grid", "model.dim=[4, 8]", *extra, "train.lr=0.1"]
        args = build_parser().parse_args(argv)
        hint = _resume_hint(args)
        assert hint.endswith(" continues the sweep")
        command = shlex.split(hint.removeprefix("; ").removesuffix(" continues the sweep"))
        assert command[0] == "recsys"
        again = build_parser().parse_args(command[1:])  # the printed command parses back to the same sweep
        assert vars(again) == {**vars(args), "resume": True}


def test_a_grid_value_is_read_back_as_given_and_not_replaced_by_a_fixed_override_of_its_section(config):
    # a fixed `model={...}` replaces the whole section: the grid's own values must be applied after it, or
    # every point silently runs the section's default
    points = grid_configs(config, parse_grid(["model.beta=[0.0, 0.5]"]), ["model={name: rp3beta}"])
    assert [c.model["beta"] for _, c in points] == [0.0, 0.5]
    # text that YAML would read as another type (a number, null) stays the text the grid gave
    points = grid_configs(config, parse_grid(['name=["007", "null"]']))
    assert [c.name for _, c in points] == ["007", "null"]


def _fake_training(monkeypatch, valid_by_dim: dict[int, dict[str, float]], tracked: bool = True):
    """run_sweep without training: each point's "run" is its config, validated to the given scores (by
    model.dim) and tested to {"ndcg@10": its position}, with a run id unless not ``tracked``; returns the calls
    to train_experiment."""
    from types import SimpleNamespace

    import eval as evaluation
    import recsys.pipeline
    import recsys.tracking

    calls = []

    def train_experiment(cfg, resume=False, echo=print):
        calls.append((cfg.model["dim"], resume))
        n = len(calls) - 1
        return SimpleNamespace(
            model=cfg,
            dataset=None,
            run_id=f"run{n}" if tracked else None,
            run_dir=f"/runs/{n}",
            test_metrics={"ndcg@10": n},
        )

    monkeypatch.setattr(recsys.pipeline, "train_experiment", train_experiment)
    monkeypatch.setattr(recsys.tracking, "tag_run", lambda *a, **k: None)  # no such runs in MLflow
    monkeypatch.setattr(
        evaluation, "evaluate_model", lambda cfg, ds, split, **kw: valid_by_dim[cfg.model["dim"]]
    )
    return calls


def test_the_sweep_chooses_by_the_early_stopping_metric_the_first_best_even_at_zero(config, monkeypatch):
    from recsys.sweep import run_sweep

    valid = {
        4: {"recall@5": 0.2, "ndcg@10": 0.9},
        8: {"recall@5": 0.3, "ndcg@10": 0.1},
        16: {"recall@5": 0.3},
    }
    calls = _fake_training(monkeypatch, valid)
    stopping = ["train.early_stopping={metric: recall@5, patience: 2}"]
    points = grid_configs(config, parse_grid(["model.dim=[4, 8, 16]"]), stopping)
    result = run_sweep(points, resume=True, echo=lambda *a: None)
    # the metric the trainer picked weights by, not ndcg@max(ks); of the two best, the earlier point
    assert (result.metric, result.chosen, result.test) == ("recall@5", 1, {"ndcg@10": 1})
    assert calls == [(4, True), (8, True), (16, True)]  # --resume continues every run
    # every run scoring 0 (a metric no run reaches) still chooses a run, the first
    calls = _fake_training(monkeypatch, {d: {"recall@5": 0.0} for d in (4, 8, 16)})
    result = run_sweep(points, echo=lambda *a: None)
    assert (result.chosen, result.test) == (0, {"ndcg@10": 0})


def test_a_later_point_without_a_validation_split_is_refused_before_the_first_trains(config, monkeypatch):
    from recsys.sweep import run_sweep

    calls = _fake_training(monkeypatch, {16: {"ndcg@10": 0.5}})
    # points built by hand (grid_configs refuses points on other data): run_sweep checks every one itself
    points = [grid_configs(config, parse_grid([f"data.split.valid_ratio=[{r}]"]))[0] for r in (0.1, 0.0)]
    with pytest.raises(
        ValueError, match="grid point data.split.valid_ratio=0.0: a sweep chooses on the valid"
    ):
        run_sweep(points, echo=lambda *a: None)
    assert calls == []


def test_the_table_reports_the_chosen_runs_values_and_test_metrics(config, monkeypatch, capsys):
    _fake_training(monkeypatch, {4: {"ndcg@10": 0.5}, 8: {"ndcg@10": 0.1}})
    assert main(["sweep", "-c", str(config), "--grid", "model.dim=[4, 8]"]) == 0
    out = capsys.readouterr().out
    assert "test metrics of the chosen run only (model.dim=4; the others' are in MLflow)" in out
    chosen = [line.split() for line in out.splitlines() if "<- chosen" in line]
    assert [row[:3] for row in chosen] == [["4", "0.5000", "run0"]]
    assert (
        "run0" in out.split("test metrics of the chosen run only")[1]
    )  # the table's row is the chosen run's


def test_an_empty_grid_or_no_score_to_choose_by_is_an_error(config, monkeypatch):
    from recsys.sweep import run_sweep

    with pytest.raises(ValueError, match="at least one grid point"):
        run_sweep([], echo=lambda *a: None)
    _fake_training(monkeypatch, {4: {"ndcg@10": float("nan")}, 8: {"ndcg@10": float("nan")}})
    with pytest.raises(ValueError, match="no run has a validation ndcg@10 to choose by"):
        run_sweep(grid_configs(config, parse_grid(["model.dim=[4, 8]"])), echo=lambda *a: None)

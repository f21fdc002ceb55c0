"""bench/two_tower_tune.py chooses on the validation split only, never on test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import two_tower_ablation  # noqa: E402
import two_tower_tune  # noqa: E402


def fake_run_one(config, variant, seed, overrides):
    """Validation tail recall = alpha; test tail recall = 1 - alpha: the two splits disagree on purpose."""
    alpha = float(next(o.split("=")[1] for o in overrides if o.startswith("model.ssl_weight=")))
    valid = {"tail/recall@50": alpha + 0.01 * seed, "all/recall@50": 0.5}
    test = {"tail/recall@50": 1.0 - alpha, "all/recall@50": 0.5}
    return {"variant": variant, "seed": seed, "metrics": test, "valid_metrics": valid, "overrides": overrides}


def test_trials_are_chosen_on_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(two_tower_ablation, "run_one", fake_run_one)
    out = tmp_path / "tune.json"
    best = two_tower_tune.main([
        "--config", "unused.yaml", "--variant", "cfm", "--seeds", "0", "1",
        "--trial", "low", "model.ssl_weight=0.1",
        "--trial", "high", "model.ssl_weight=0.9",
        "--set", "train.epochs=2",
        "--out", str(out),
    ])  # fmt: skip
    assert best == "high"  # best on validation, worst on test
    saved = json.loads(out.read_text())
    assert saved["trials"]["high"]["valid"] == pytest.approx(0.905)  # mean over the two seeds
    assert saved["trials"]["high"]["test"] == pytest.approx(0.1)
    # the shared overrides come first, the trial's own last (so a trial can override a shared setting)
    assert saved["trials"]["low"]["runs"][0]["overrides"] == ["train.epochs=2", "model.ssl_weight=0.1"]


def test_bad_trials_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(two_tower_ablation, "run_one", fake_run_one)
    common = ["--config", "c.yaml", "--variant", "cfm", "--out", str(tmp_path / "t.json")]
    with pytest.raises(SystemExit):
        two_tower_tune.main([*common, "--trial", "a", "model.ssl_weight"])  # no '='
    with pytest.raises(SystemExit):
        two_tower_tune.main(
            [*common, "--trial", "a", "model.ssl_weight=1", "--trial", "a", "model.ssl_weight=2"]
        )


def test_a_mistyped_select_is_refused_before_any_training(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(two_tower_ablation, "run_one", lambda *a: calls.append(a) or fake_run_one(*a))
    with pytest.raises(SystemExit):
        two_tower_tune.main([
            "--config", "c.yaml", "--variant", "cfm", "--trial", "a", "model.ssl_weight=0.1",
            "--select", "tail/recall@20", "--out", str(tmp_path / "t.json"),
        ])  # fmt: skip
    assert calls == [] and "invalid choice: 'tail/recall@20'" in capsys.readouterr().err


def ablation_file(path: Path, runs: list[tuple[str, int]], overrides: list[str]) -> Path:
    metrics = {key: 0.1 for key in two_tower_ablation.KEYS}
    records = [{"variant": v, "seed": s, "metrics": metrics} for v, s in runs]
    path.write_text(json.dumps({"config": "c.yaml", "overrides": overrides, "runs": records}))
    return path


def test_ablation_results_are_never_overwritten_or_merged_blindly(tmp_path, capsys):
    a = ablation_file(tmp_path / "a.json", [("cfm", 0), ("no_ssl", 0)], ["train.epochs=8"])
    b = ablation_file(tmp_path / "b.json", [("cfm", 1)], ["train.epochs=8"])
    merged = tmp_path / "merged.json"
    two_tower_ablation.main(["--merge", str(a), str(b), "--out", str(merged)])
    assert json.loads(merged.read_text())["summary"]["cfm"]["seeds"] == 2
    before = merged.read_text()
    # an existing results file is replaced only with --force
    with pytest.raises(SystemExit):
        two_tower_ablation.main(["--merge", str(a), str(b), "--out", str(merged)])
    assert "exists already" in capsys.readouterr().err and merged.read_text() == before
    # the same seed twice, or runs of different settings, are not seeds of one setting
    with pytest.raises(SystemExit):
        two_tower_ablation.main(["--merge", str(a), str(a), "--out", str(tmp_path / "twice.json")])
    assert "variant cfm seed 0 is in both" in capsys.readouterr().err
    c = ablation_file(tmp_path / "c.json", [("cfm", 2)], ["train.epochs=2"])
    with pytest.raises(SystemExit):
        two_tower_ablation.main(["--merge", str(a), str(c), "--out", str(tmp_path / "mixed.json")])
    assert "different settings" in capsys.readouterr().err
    assert not (tmp_path / "twice.json").exists() and not (tmp_path / "mixed.json").exists()

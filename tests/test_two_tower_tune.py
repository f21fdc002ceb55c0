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

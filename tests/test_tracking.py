"""Where MLflow runs and their artifacts land (``recsys.tracking``)."""

from __future__ import annotations

import os

from recsys.tracking import RunTracker


def test_the_embedded_store_keeps_artifacts_under_recsys_home(_isolated_home, tmp_path, monkeypatch):
    """With the embedded store, artifacts go to ``$RECSYS_HOME/mlartifacts``, never to ``./mlruns`` of the
    folder the job runs from. The second experiment checks the case that once failed: MLflow's
    ``set_tracking_uri`` sets ``MLFLOW_TRACKING_URI`` itself, so the process then looks configured."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    note = tmp_path / "note.txt"
    note.write_text("an artifact")
    for experiment in ("first", "second"):
        with RunTracker.start(experiment=experiment, run_name=experiment) as run:
            run.log_artifact(note)
    assert list(work.iterdir()) == []
    stored = sorted((_isolated_home / "mlartifacts").rglob("note.txt"))
    assert len(stored) == 2 and all(p.read_text() == "an artifact" for p in stored)


def test_a_new_recsys_home_in_the_same_process_gets_its_own_store(tmp_path, monkeypatch):
    """MLflow exports the URI it is given as MLFLOW_TRACKING_URI; left there, it would pin the process to the
    first RECSYS_HOME's store (and send the next experiment's artifacts to ./mlruns)."""
    monkeypatch.chdir(tmp_path)
    note = tmp_path / "note.txt"
    note.write_text("an artifact")
    for home in ("a", "b"):
        monkeypatch.setenv("RECSYS_HOME", str(tmp_path / home))
        with RunTracker.start(experiment=f"in-{home}") as run:
            run.log_artifact(note)
        assert run.uri == f"sqlite:///{tmp_path / home / 'mlflow.db'}"
        assert len(list((tmp_path / home / "mlartifacts").rglob("note.txt"))) == 1
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert not (tmp_path / "mlruns").exists()

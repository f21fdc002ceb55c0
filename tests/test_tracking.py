"""Where MLflow runs and their artifacts land (``recsys.tracking``)."""

from __future__ import annotations

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

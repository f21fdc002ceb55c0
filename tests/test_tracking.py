"""Where MLflow runs and their artifacts land (``recsys.tracking``)."""

from __future__ import annotations

import os

import pytest

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


def test_more_params_than_one_mlflow_request_holds_are_all_logged(_isolated_home, tmp_path, monkeypatch):
    """MLflow takes at most 100 params per request and splits a larger ``log_params`` batch itself."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    params = {"model": {f"p{i}": i for i in range(250)}, "train": {"epochs": None, "ks": [10, 20]}}
    with RunTracker.start(experiment="many-params") as run:
        run.log_params(params)
    logged = mlflow.MlflowClient(run.uri).get_run(run.run_id).data.params
    assert len(logged) == 252 and logged["model.p249"] == "249"
    assert logged["train.epochs"] == "null" and logged["train.ks"] == "[10, 20]"


def _free_port() -> int:
    """A local port with nothing listening on it (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_server_that_does_not_answer_is_named_at_once(monkeypatch, capsys):
    """MLflow retries every request to a server with backoff (minutes with its defaults) and then fails with
    a retry error; a server with nothing listening is refused before MLflow's first request, naming it. The
    retries are turned down here so that a regression fails quickly rather than hanging."""
    import pytest

    from recsys.cli import main

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ConnectionError, match=f"tracking server {url} does not answer"):
        RunTracker.start(uri=url)
    # user:password@ is no part of the host to connect to, and no password goes into a message
    with pytest.raises(ConnectionError, match=f"tracking server {url} does not answer") as caught:
        RunTracker.start(uri=url.replace("//", "//alice:secret@"))
    assert "secret" not in str(caught.value)
    assert main(["evaluate", "--run", "0" * 32, "--tracking-uri", url]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: the MLflow tracking server {url} does not answer")
        and "MLFLOW_TRACKING_URI" in err
    )


def _serve(handler_cls):
    import threading
    from http.server import HTTPServer

    server = HTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_any_http_answer_counts_as_a_reachable_tracking_server(monkeypatch):
    """The check only refuses what cannot be reached: a server that answers, even with an error status (a
    proxy, a path prefix without /health), is left to MLflow; and the probe reaches it the way MLflow's
    requests do, through the proxy that ALL_PROXY names (urllib ignored it: a false refusal)."""
    from http.server import BaseHTTPRequestHandler

    from recsys.tracking import _check_server_answers

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = _serve(NotFound)
    try:
        _check_server_answers(f"http://127.0.0.1:{server.server_port}/prefix/")
        _check_server_answers(f"http://127.0.0.1:{server.server_port}/ml flow")  # quoted as requests does
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{server.server_port}")
        _check_server_answers("http://mlflow.invalid:5000")  # only the proxy can reach it
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_does_not_speak_http_is_refused(capsys):
    """Something listening that answers in another protocol (a wrong port): refused by name, exit 2 on the
    command line (http.client's BadStatusLine escaped the CLI as a traceback)."""
    import socket
    import threading

    from recsys.cli import main

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)

    def greet():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    threading.Thread(target=greet, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        assert main(["evaluate", "--run", "0" * 32, "--tracking-uri", url]) == 2
    finally:
        listener.close()
    err = capsys.readouterr().err
    assert err.startswith(f"error: the MLflow tracking server {url} does not answer (BadStatusLine")


def test_a_plain_path_to_a_sqlite_store_says_to_write_a_sqlite_uri(_isolated_home, capsys):
    """``--tracking-uri $RECSYS_HOME/mlflow.db`` got MLflow's notice that file stores are deprecated, which
    does not say what to write instead."""
    from recsys.cli import main

    with RunTracker.start(experiment="any"):
        pass
    db = _isolated_home / "mlflow.db"
    assert main(["evaluate", "--run", "0" * 32, "--tracking-uri", str(db)]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip() == f"error: the tracking store {db} is a SQLite database file: give it as sqlite:///{db}"
    )


_START_TOGETHER = """
import sys, time
from pathlib import Path
from recsys.tracking import RunTracker

folder, me, jobs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(folder / f"ready-{me}").touch()
deadline = time.time() + 120
while len(list(folder.glob("ready-*"))) < jobs and time.time() < deadline:  # all imported: start together
    time.sleep(0.002)
tracker = RunTracker.start(uri=f"sqlite:///{folder}/mlflow.db", experiment="together", run_name=me)
tracker.end()
"""


def test_jobs_started_together_on_a_new_sqlite_store_all_get_their_runs(tmp_path):
    """MLflow creates a new SQLite store's tables on first use with no guard: three jobs started at once on
    a fresh store used to fail ("duplicate column name: step", "table ... already exists")."""
    import subprocess
    import sys

    import mlflow

    jobs = 3
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _START_TOGETHER, str(tmp_path), f"job{i}", str(jobs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(jobs)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-2000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiments = [e for e in client.search_experiments() if e.name == "together"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["job0", "job1", "job2"]


def test_a_store_in_a_folder_that_takes_no_lock_file_is_still_read(tmp_path, monkeypatch):
    """Taking turns needs ``mlflow.db.lock`` beside the store; in a read-only folder none can be made, and
    listing the store's runs must work as before (a first version of the lock refused it)."""
    import filelock

    from recsys import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    RunTracker.start(uri=uri, experiment="shared", run_name="earlier").end()

    def read_only_folder(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", self.lock_file)

    monkeypatch.setattr(filelock.FileLock, "acquire", read_only_folder)
    assert [r["name"] for r in tracking.list_runs(uri)] == ["earlier"]


def test_a_damaged_sqlite_store_is_one_error_line_naming_its_file(tmp_path, capsys):
    """A store file that SQLite cannot read (damaged, truncated, another file) raised SQLAlchemy's traceback
    from every command; a folder in its place was retried for nearly two minutes first."""
    import time

    from recsys.cli import main

    for name, make in [
        ("garbage.db", lambda p: p.write_text("not a database\n" * 100)),
        ("folder.db", lambda p: p.mkdir()),
    ]:
        db = tmp_path / name
        make(db)
        t0 = time.monotonic()
        assert main(["runs", "--tracking-uri", f"sqlite:///{db}"]) == 2, name
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if not line.startswith("warning:")]
        assert len(errors) == 1, err
        assert errors[0].startswith(f"error: the MLflow tracking store sqlite:///{db} cannot be used: "), err
        assert time.monotonic() - t0 < 30, name
    with pytest.raises(OSError, match=r"garbage\.db: file is not a database"):
        RunTracker.start(uri=f"sqlite:///{tmp_path}/garbage.db", experiment="x")
    (tmp_path / "a-file").write_text("a file")  # was: "[Errno 17] File exists: '.../a-file'"
    with pytest.raises(
        OSError, match=r"x\.db cannot be used: its folder .*a-file cannot be made \(File exists"
    ):
        RunTracker.start(uri=f"sqlite:///{tmp_path}/a-file/x.db", experiment="x")


def test_list_params_are_logged_as_json(_isolated_home):
    import mlflow

    with RunTracker.start(experiment="params") as run:
        run.log_params({"data": {"features": ["age", "genre"], "ks": [10, 20], "none": None}})
    params = mlflow.MlflowClient(run.uri).get_run(run.run_id).data.params
    assert params == {"data.features": '["age", "genre"]', "data.ks": "[10, 20]", "data.none": "null"}


def test_a_failed_download_leaves_no_temp_folder(_isolated_home, tmp_path, monkeypatch):
    import tempfile

    from recsys.tracking import download_run_artifacts

    with RunTracker.start(experiment="dl") as run:
        pass
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(FileNotFoundError, match="has no artifact 'model'"):
        download_run_artifacts(run.run_id, "model")
    assert list(scratch.iterdir()) == []


def test_an_in_memory_sqlite_store_is_no_file(tmp_path, monkeypatch):
    from recsys.tracking import list_runs

    monkeypatch.chdir(tmp_path)
    assert list_runs("sqlite:///:memory:") == []  # not "there is no MLflow store at .../:memory:"
    assert list(tmp_path.iterdir()) == []  # no lock file, no folder


def test_a_sqlite_store_keeps_its_artifacts_beside_its_file(tmp_path, monkeypatch):
    """Not only the embedded store: ``tracking.uri: sqlite:///...`` keeps a run's artifacts in ``mlartifacts``
    beside the database, never in ``./mlruns`` of the folder the job runs from."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    note = tmp_path / "note.txt"
    note.write_text("an artifact")
    with RunTracker.start(uri=f"sqlite:///{tmp_path}/store/mlflow.db", experiment="beside") as run:
        run.log_artifact(note)
    assert list(work.iterdir()) == []
    (stored,) = (tmp_path / "store" / "mlartifacts").rglob("note.txt")
    assert stored.read_text() == "an artifact"


def test_only_a_bad_run_id_reads_as_no_such_run():
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    from recsys.tracking import _no_such_run

    def error(text, code):
        return MlflowException(text, error_code=getattr(databricks_pb2, code or "INTERNAL_ERROR"))

    assert _no_such_run(error("Run 'x' not found", "RESOURCE_DOES_NOT_EXIST"))
    assert _no_such_run(error("Invalid value 'x' for parameter 'run_id' supplied", "INVALID_PARAMETER_VALUE"))
    assert _no_such_run(
        error("The run x must be in the 'active' state. Current state is deleted state.", None)
    )
    assert not _no_such_run(error("a file store is refused", "INVALID_PARAMETER_VALUE"))
    assert not _no_such_run(error("database is locked", "INTERNAL_ERROR"))

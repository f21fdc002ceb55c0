"""MLflow tracking with an embedded default store (no server needed).

``RunTracker`` is the only place that talks to MLflow, so models and the trainer stay free of it.  The store
is ``sqlite:///$RECSYS_HOME/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` (or ``tracking.uri``) says otherwise;
artifacts of experiments created here with a SQLite store go to ``mlartifacts/`` beside its file
(``$RECSYS_HOME/mlartifacts`` for the embedded one), never to the working folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from recsys.paths import default_tracking_uri, embedded_tracking_uri, recsys_home


def _quiet_mlflow() -> None:
    # Alembic and MLflow print migration chatter on first use of a SQLite store; keep stdout for results.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import mlflow  # noqa: F401  (mlflow configures its loggers on import; quiet them afterwards)

    for name in ("alembic", "mlflow", "mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _use_store(uri: str) -> None:
    """Point MLflow at ``uri``, without the side effect of ``mlflow.set_tracking_uri`` (MLflow 3) of
    exporting it as ``MLFLOW_TRACKING_URI``: left set, that variable would read as the user's choice and
    pin this process to the first store it used, whatever ``RECSYS_HOME`` says afterwards."""
    import mlflow

    _check_server_answers(uri)
    _check_not_a_bare_database(uri)
    if (db := _sqlite_file(uri)) is not None:
        if db.is_dir():  # MLflow retries opening it for nearly two minutes, then fails naming no file
            raise OSError(f"the MLflow tracking store {uri} cannot be used: {db} is a folder, not a database")
        # MLflow creates the folder from the URI's raw text, which is not the path for an encoded ``%3F``.
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file where a folder should be: "[Errno 17] File exists: ..." said no more
            raise OSError(
                f"the MLflow tracking store {uri} cannot be used: its folder {db.parent} cannot be made "
                f"({exc.strerror or first_line(exc)})"
            ) from None
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    if db is not None:
        from sqlalchemy.exc import DatabaseError

        with _store_lock(uri):
            # MLflow creates and migrates a new SQLite store on its first use in a process, with no guard
            # against another process doing the same: two jobs started together on a fresh store both
            # failed ("duplicate column name: step"). One at a time here; MLflow caches the store object
            # per process, so on later calls this query is all it costs.
            try:
                mlflow.search_experiments(max_results=1)
            except DatabaseError as exc:  # SQLAlchemy's, through MLflow unwrapped: a traceback naming no file
                raise OSError(
                    f"the MLflow tracking store {uri} cannot be used: {db}: {first_line(exc.orig or exc)} (a "
                    "damaged database, or a file or folder that is none: move it away, and a new store is made "
                    "there; or point MLFLOW_TRACKING_URI, tracking.uri or --tracking-uri at another store)"
                ) from None


STORE_LOCK_TIMEOUT_S = 600.0


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Hold ``<database>.lock`` of a ``sqlite:///`` store while creating what must exist once (the
    store's tables, an experiment); other stores serialise on their own, so nothing is held for them."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(str(db) + ".lock", timeout=STORE_LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise RuntimeError(
            f"the tracking store {uri} stayed locked by another process for {STORE_LOCK_TIMEOUT_S:.0f} s "
            f"({lock.lock_file}); is a job stuck while creating it?"
        ) from None
    except OSError:
        # No lock file can be made there (a read-only folder): nothing can be created in that store either,
        # so there is nothing to take turns for; reading it must still work.
        yield
        return
    try:
        yield
    finally:
        lock.release()


SERVER_CONNECT_TIMEOUT_S = 10.0


def _check_server_answers(uri: str) -> None:
    """Refuse an ``http(s)://`` tracking server that cannot be reached (nothing listening, an unknown host,
    no answer within :data:`SERVER_CONNECT_TIMEOUT_S`): MLflow would retry each request with backoff for
    minutes before failing. The probe goes through ``requests``, as MLflow's own requests do (the same
    proxies and URL quoting); any HTTP answer counts as reached, as does a TLS error (MLflow has its own
    certificate settings); MLflow still retries a server that fails later, during a run."""
    import requests

    parts = urlsplit(uri)
    try:
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return
        # Without user:password@ (no password in a message; MLflow sends its credentials otherwise)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        server = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port is not None else "")
    except ValueError:  # a port that is no number: MLflow's own error names it
        return
    try:
        requests.get(server + parts.path.rstrip("/") + "/health", timeout=SERVER_CONNECT_TIMEOUT_S).close()
    except requests.exceptions.SSLError:
        return
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise ConnectionError(
            f"the MLflow tracking server {server} does not answer ({_root_cause(exc)}); start it, or point "
            "MLFLOW_TRACKING_URI, the config's tracking.uri (train, sweep) or --tracking-uri (the commands "
            "given --run, and runs) at one that runs; without any, runs go to the embedded store under $RECSYS_HOME"
        ) from None
    except requests.exceptions.RequestException:
        return  # something answered, or the URL is MLflow's to refuse: its own error says how


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of a requests error (``[Errno 111] Connection refused``, ``BadStatusLine: ...``
    for a server that answers in something other than HTTP), not urllib3's wrappers of it."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or next((a for a in exc.args if isinstance(a, BaseException)), None)
        inner = inner or getattr(exc, "reason", None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return first_line(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {first_line(exc)}"


def _check_not_a_bare_database(uri: str) -> None:
    """Refuse a plain path to a SQLite file (``$RECSYS_HOME/mlflow.db``): MLflow reads a path as a folder
    store and answers with its file-store deprecation notice, which does not say to write ``sqlite:///``."""
    if urlsplit(uri).scheme or not os.path.isfile(uri):  # (Windows drive letters parse as schemes: left be)
        return
    try:
        with open(uri, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return
    if head == b"SQLite format 3\x00":
        raise ValueError(
            f"the tracking store {uri} is a SQLite database file: give it as sqlite:///{Path(uri).resolve()}"
        )


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (absolute), or None (another store, in-memory SQLite, a
    SQLite URI filename ``file:...?uri=true``, whose path SQLite itself parses)."""
    if not uri.startswith("sqlite:///"):
        return None
    path, _, query = uri[len("sqlite:///") :].partition("?")
    path = unquote(path)  # as SQLAlchemy reads it
    if not path or path == ":memory:" or (path.startswith("file:") and "uri=true" in query.lower()):
        return None
    return Path(path).absolute()


def git_commit() -> str:
    """The code version: the git commit of the source tree (with ``-dirty`` if modified), or ``unknown``."""
    src = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` says)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown"


def machine_tags() -> dict[str, str]:
    """Where a run trains: the CPU model and the torch build. The same config and seed can train another
    model on another CPU (its kernels round differently, and training carries last-bit differences on), so a
    run says where its numbers came from."""
    import torch

    return {"cpu": cpu_model(), "torch_version": torch.__version__}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _metric_key(name: str) -> str:
    # MLflow metric names allow letters, digits, _ - . / and spaces; '@' is not allowed.
    return name.replace("@", "_at_")


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (MLflow's run on over many lines), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _no_such_run(exc: Exception) -> bool:
    """Whether an MLflow error says the run is not there to use (no such id, a malformed id, a deleted run),
    rather than that the store failed (locked, unreachable), which a retry may cure."""
    code, text = getattr(exc, "error_code", None), str(exc)
    # A refused store (MLflow 3's file stores) is an INVALID_PARAMETER_VALUE too: only a bad run id counts.
    return (
        code == "RESOURCE_DOES_NOT_EXIST"
        or (code == "INVALID_PARAMETER_VALUE" and "parameter 'run_id'" in text)
        or "deleted state" in text
    )


class RunNotFoundError(LookupError):
    """No MLflow run with this id in the store (or no store at the path a ``sqlite:///`` URI names)."""


class ResumeRunError(ValueError):
    """The MLflow run to continue is not in the store, or cannot be continued (deleted)."""

    def __init__(self, run_id: str, store: str, cause: Exception) -> None:
        self.run_id, self.store = run_id, store
        super().__init__(f"MLflow run {run_id} cannot be continued in the store {store}: {first_line(cause)}")


class RunTracker:
    """One MLflow run. ``RunTracker.start(...)`` creates or resumes a run; use as a context manager."""

    def __init__(
        self, run_id: str | None, enabled: bool, uri: str | None, experiment: str | None = None
    ) -> None:
        self.run_id = run_id
        self.enabled = enabled
        self.uri = uri
        self.experiment = experiment  # the name of the run's experiment (a resumed run keeps its own)

    # ---- lifecycle ----------------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        *,
        enabled: bool = True,
        experiment: str = "recsys",
        uri: str | None = None,
        run_name: str | None = None,
        resume_run_id: str | None = None,
    ) -> RunTracker:
        """Start a new run in ``experiment``, or continue ``resume_run_id`` (raises :class:`ResumeRunError`
        when the store cannot). A continued run stays in its own experiment, which MLflow cannot change:
        compare :attr:`experiment` with the one asked for."""
        if not enabled:
            return cls(None, False, None)
        _quiet_mlflow()
        import mlflow

        uri = uri or default_tracking_uri()
        _use_store(uri)
        if resume_run_id:
            from mlflow.exceptions import MlflowException

            try:
                run = mlflow.start_run(run_id=resume_run_id)
            except MlflowException as exc:
                if not _no_such_run(exc):
                    raise
                raise ResumeRunError(resume_run_id, uri, exc) from None
            return cls(run.info.run_id, True, uri, mlflow.get_experiment(run.info.experiment_id).name)
        with _store_lock(uri):  # two jobs starting together must not both create the experiment
            exp_id = _experiment_id(experiment, uri)
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name)
        return cls(run.info.run_id, True, uri, experiment)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled:
            import mlflow

            mlflow.end_run(status=status)

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end(
            "FINISHED"
            if exc_type is None
            else ("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")  # Ctrl-C or SIGTERM
        )

    # ---- logging ------------------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        import mlflow

        flat = {
            k: ("null" if v is None else json.dumps(v) if isinstance(v, list) else v)
            for k, v in flatten(params).items()
        }
        mlflow.log_params(flat)  # MLflow splits a large batch into requests of its own limit

    def last_step(self, key: str) -> int | None:
        """The highest step at which the run logged metric ``key`` (``@`` written as in MLflow), or None."""
        if not self.enabled or self.run_id is None:
            return None
        import mlflow

        history = mlflow.MlflowClient(self.uri).get_metric_history(self.run_id, _metric_key(key))
        return max((m.step for m in history), default=None)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            import mlflow

            mlflow.set_tags(tags)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, prefix: str = "") -> None:
        if not self.enabled:
            return
        import mlflow

        mlflow.log_metrics({_metric_key(prefix + k): float(v) for k, v in metrics.items()}, step=step)

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_dict(data, name)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_artifacts(str(folder), artifact_path)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_artifact(str(path), artifact_path)

    def log_figure(self, fig, name: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_figure(fig, name)


def _experiment_id(experiment: str, uri: str) -> str:
    """The id of ``experiment`` in the store ``uri`` (already in use), created when missing."""
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    # Without a location MLflow puts a local store's artifacts in ./mlruns of whatever folder the job
    # runs from; keep them beside the SQLite file instead, so that a store is one folder.
    location = None
    if uri == embedded_tracking_uri():
        location = (recsys_home() / "mlartifacts").as_uri()
    elif (db := _sqlite_file(uri)) is not None:
        location = (db.parent / "mlartifacts").as_uri()
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.create_experiment(experiment, artifact_location=location)
    except MlflowException as exc:
        # A server store: another job created it since the lookup (a SQLite one is locked meanwhile).
        if (
            exc.error_code != "RESOURCE_ALREADY_EXISTS"
            or (exp := mlflow.get_experiment_by_name(experiment)) is None
        ):
            raise
        return exp.experiment_id


def _missing_store(uri: str | None) -> tuple[str, Path | None]:
    """The store ``uri`` names (default: the configured one), and its database file when it is a
    ``sqlite:///`` store that does not exist: reading must not create one (a mistyped path used to leave an
    empty database behind)."""
    store = uri or default_tracking_uri()
    db = _sqlite_file(store)
    return store, db if db is not None and not db.exists() else None


def tag_run(
    run_id: str, tags: dict[str, str], uri: str | None = None, *, metrics: dict[str, float] | None = None
) -> None:
    """Set tags (and log ``metrics``, names as the evaluation writes them) on a run, finished or not: the sweep
    marks its runs and records the validation score it chose by."""
    _quiet_mlflow()
    import mlflow

    _use_store(uri or default_tracking_uri())
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    for name, number in (metrics or {}).items():
        client.log_metric(run_id, _metric_key(name), float(number))


def run_tag(run_id: str, key: str, uri: str | None = None) -> str | None:
    """A tag of a run, or None when the run, the tag or the store is missing (a cheap look before loading
    the run; loading says what is wrong with it)."""
    store, missing = _missing_store(uri)
    if missing is not None:
        return None
    _quiet_mlflow()
    import mlflow
    from mlflow.exceptions import MlflowException

    _use_store(store)
    try:
        return mlflow.MlflowClient().get_run(run_id).data.tags.get(key)
    except MlflowException:
        return None


def list_runs(uri: str | None = None, experiment: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` runs of the store (of one experiment, or all), newest first, each a dict: ``run_id``,
    ``name``, ``experiment``, ``status``, ``start`` (ms since the epoch), ``model`` (``model.name``),
    ``parent`` (a re-ranker's run: the first-stage run), and ``test`` (its ``test_final`` metrics, named as the
    evaluation names them: ``ndcg@20``; a re-ranker's run: ``reranked/ndcg@20`` and ``retrieval/ndcg@20``).

    Raises:
        LookupError: a ``sqlite:///`` store that does not exist (listing creates none), or ``experiment`` names
            no experiment of the store (the message lists those it has).
    """
    store, missing = _missing_store(uri)
    if missing is not None:
        raise LookupError(
            f"there is no MLflow store at {missing} (recsys train creates it; point --tracking-uri, "
            "MLFLOW_TRACKING_URI or RECSYS_HOME at the store that has your runs)"
        )
    _quiet_mlflow()
    import mlflow

    _use_store(store)
    client = mlflow.MlflowClient()
    names = {e.experiment_id: e.name for e in client.search_experiments()}
    if experiment is None:
        ids = list(names)
    elif experiment in names.values():
        ids = [i for i, n in names.items() if n == experiment]
    else:
        raise LookupError(
            f"no experiment {experiment!r} in the store {store}; it has: {', '.join(sorted(names.values()))}"
        )
    runs = client.search_runs(ids, max_results=limit, order_by=["attributes.start_time DESC"]) if ids else []
    out = []
    prefix = "test_final/"
    for run in runs:
        test = {
            k[len(prefix) :].replace("_at_", "@"): v
            for k, v in run.data.metrics.items()
            if k.startswith(prefix)
        }
        out.append(
            {
                "run_id": run.info.run_id,
                "name": run.info.run_name,
                "experiment": names.get(run.info.experiment_id),
                "status": run.info.status,
                "start": run.info.start_time,
                "model": run.data.params.get("model.name"),
                "parent": run.data.tags.get("mlflow.parentRunId"),
                "test": test,
            }
        )
    return out


def download_run_artifacts(run_id: str, artifact_path: str = "", uri: str | None = None) -> Path:
    """Fetch a run's artifacts (e.g. ``model``) to a local folder and return its path."""
    _quiet_mlflow()
    import mlflow
    from mlflow.exceptions import MlflowException

    where = (
        "point --tracking-uri, load_run(uri=...), MLFLOW_TRACKING_URI or RECSYS_HOME at the store that has it"
    )
    store, missing = _missing_store(uri)
    if missing is not None:
        raise RunNotFoundError(f"no MLflow run {run_id!r}: there is no MLflow store at {missing} ({where})")
    _use_store(store)
    try:
        run = mlflow.get_run(run_id)
        status = run.info.status
    except MlflowException as exc:
        if not _no_such_run(exc):  # the store itself failed: say so, not "no run"
            raise OSError(f"MLflow store {store}: {first_line(exc)}") from None
        raise RunNotFoundError(f"no MLflow run {run_id!r} in the store {store} ({where})") from None
    dst = Path(tempfile.mkdtemp(prefix=f"recsys-run-{run_id[:8]}-"))
    try:
        return Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst))
        )
    except BaseException as exc:
        shutil.rmtree(dst, ignore_errors=True)  # nothing half-downloaded is left behind
        if not isinstance(exc, MlflowException):
            raise
        top = artifact_path.split("/")[0]
        present = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
        parent = run.data.tags.get("mlflow.parentRunId")
        if top and top not in present and "reranker" in present and parent:
            raise FileNotFoundError(
                f"run {run_id} is a re-ranker's run (`recsys rerank`), a child of run {parent}, and has no "
                f"{artifact_path!r}: give --run {parent} (`recommend` and `serve` apply the re-ranker with "
                f"--reranker DIR; its test numbers are this run's test_final/reranked/* metrics)"
            ) from None
        if top and top not in present:
            why = {
                "KILLED": "it was interrupted (KILLED) before its end, where a run saves its model; recsys "
                "train --resume with its config and overrides finishes it",
                "RUNNING": "it is RUNNING: still training (a run saves its model at its end), or its process "
                "was killed without a word",
                "FAILED": "it FAILED before its end, where a run saves its model (its error is in the "
                "training's output)",
            }.get(status, "a run trained with tracking.log_model: false saves no model")
            if status == "FINISHED" and run.data.params.get("tracking.log_model") == "True":
                # its model was logged (a FINISHED run logs it last): it was removed from the store since
                why = (
                    f"it was trained with tracking.log_model: true, so its {artifact_path!r} was removed from "
                    "the store's artifacts since; train the run again"
                )
            raise FileNotFoundError(
                f"run {run_id} in the store {store} has no artifact {artifact_path!r}; {why}"
            ) from None
        raise OSError(
            f"run {run_id}: downloading {artifact_path!r} from the store {store} failed: {exc}"
        ) from None

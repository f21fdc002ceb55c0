"""The job end to end: prepare data -> build model -> train -> test -> log to MLflow; and the way back from
an MLflow run id to a usable (config, dataset, model) for evaluation, indexing and recommendation."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from features._hashing import sha256_bytes
from recsys.atomic import atomic_write
from recsys.config import ExperimentConfig, dump_config, validate_config
from recsys.paths import recsys_home
from recsys.scorer_recommender import ScorerRecommender as ScorerRecommender  # its older home
from recsys.tracking import ResumeRunError, RunTracker, download_run_artifacts, git_commit, machine_tags

if TYPE_CHECKING:
    import numpy as np

    from recsys.models.base import Recommender

MODEL_ARTIFACT = "model"


@dataclass
class RunResult:
    run_id: str | None
    config: ExperimentConfig
    dataset: Any
    model: Recommender
    test_metrics: dict[str, float]
    history: list[dict[str, float]]
    run_dir: Path
    train_seconds: float
    selection: str | None = None
    """Which weights were tested, when validation chose them: "weights of epoch 5 of 40, best valid ndcg@20
    0.4430"."""
    best_epoch: int = -1
    """The epoch whose weights were tested when validation chose them (-1: the last epoch's)."""
    best_valid: float | None = None
    """The monitored validation metric of those weights."""


RUN_COMPLETE = "run_complete"
"""A run folder's marker, written once its run was tested and logged (its model in the tracking store)."""


def _unfinished_epoch(run_dir: Path) -> tuple[int, bool] | None:
    """``(epoch, trained)`` of ``run_dir``'s checkpoint when it is of a run that did not complete, else None
    (none, a completed run's, or one that cannot be read). ``trained``: its training finished, but the run was
    stopped before it was tested and logged (its model is in no tracking store, only in this checkpoint)."""
    from recsys.trainer import CHECKPOINT

    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        # mmap: only the small state is read, not the model's and optimiser's tensors
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)["state"]
    except Exception:  # unreadable: nothing a resume could use either
        return None
    if state.get("finished") and (run_dir / RUN_COMPLETE).exists():
        return None
    return int(state.get("epoch", 0)), bool(state.get("finished"))


DISCARDED_SUFFIX = ".discarded"
"""The suffix of a run folder that training again without ``--resume`` set aside (an unfinished run's)."""


def run_dir_for(cfg: ExperimentConfig) -> Path:
    """Checkpoints of a config live in one folder named by the config's fingerprint, so that ``--resume``
    finds them again."""
    return recsys_home() / "runs" / f"{cfg.name}-{cfg.fingerprint()}"


class RunFolderBusy(ValueError):
    """Another training of the same config holds its run folder."""


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` for one training, so that a second training of the same config
    (which would share its checkpoint, and without ``--resume`` delete it) stops with an error instead.

    The lock is ``runs/.<folder>.lock`` beside the folder, since a fresh run deletes the folder itself; the
    operating system releases it when the process ends, however it ends. Without ``fcntl`` (Windows) no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir.parent / f".{run_dir.name}.lock"
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(
                f"{run_dir}: another training of this config is running (it holds {lock_path}); wait for it "
                "to end, or give this one another name or seed"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _other_checkpoints(run_dir: Path, name: str) -> list[Path]:
    """Run folders of other configs with the same experiment name that hold a checkpoint."""
    return sorted(
        p.parent
        for p in run_dir.parent.glob(f"{name}-*/checkpoint.pt")
        if p.parent != run_dir and p.parent.name[len(name) + 1 :].isalnum()
    )


def _plot_history(history: list[dict[str, float]], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in sorted({k for h in history for k in h if k.startswith("train/")}):
        ax1.plot(epochs, [h.get(key, float("nan")) for h in history], label=key[6:])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_title("training loss parts")
    ax1.legend(fontsize=8)
    metric_keys = sorted(
        {
            k
            for h in history
            for k in h
            if k.startswith(("valid/", "test/"))
            and "coverage" not in k
            and k.split("@")[0].split("/")[1] in ("recall", "ndcg")
        }
    )
    for key in metric_keys:
        pts = [(h["epoch"], h[key]) for h in history if key in h]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_title("evaluation")
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


MODEL_FILES = ("model.pt", "config.yaml", "dataset.json")
CHECKSUMS = "checksums.json"


def save_model_folder(folder: Path, cfg: ExperimentConfig, model: Recommender, dataset: Any) -> Path:
    """The model artifact: weights, resolved config and the dataset's manifest (to find and check the data),
    and ``checksums.json``, the sha256 of each, which :func:`load_run` verifies (torch checks no CRC: a
    flipped byte in a weight would load without a word)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "model.pt")
    (folder / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "root": str(dataset.root),
                "manifest_hash": dataset.manifest_hash,
                # data.path as this process read it: a relative path means nothing from another folder
                "source_path": None
                if cfg.data.path == "auto"
                else str(Path(cfg.data.path).expanduser().absolute()),
                "manifest": dataset.manifest,
            },
            indent=2,
            default=str,
        ),
        encoding="utf-8",
    )
    sums = {name: sha256_bytes((folder / name).read_bytes()) for name in MODEL_FILES}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=2), encoding="utf-8")
    return folder


def _verify_model_folder(run_id: str, folder: Path, damaged: str) -> None:
    """Check the model artifact's files against its ``checksums.json`` (runs logged before it existed have none
    and are not checked); a ValueError names the file."""
    path = folder / CHECKSUMS
    if not path.exists():
        return
    try:
        sums = json.loads(path.read_text(encoding="utf-8"))
        expected = {name: str(sums[name]) for name in MODEL_FILES}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"run {run_id}: {CHECKSUMS} cannot be read ({exc}); {damaged}") from None
    for name, digest in expected.items():
        if sha256_bytes((folder / name).read_bytes()) != digest:
            raise ValueError(f"run {run_id}: {name} differs from its sha256 in {CHECKSUMS}; {damaged}")


def prepare_model(model: Recommender, dataset: Any) -> None:
    """Give a new model its training data: ``prepare(train matrix)`` for every model, then
    ``prepare_dataset(dataset)`` for models that define it (sequence models, which need each user's items in
    time order, not just the matrix).  Both must be deterministic: a loaded run calls them again."""
    model.prepare(dataset.matrix("train"))
    prepare_dataset = getattr(model, "prepare_dataset", None)
    if callable(prepare_dataset):
        prepare_dataset(dataset)


def train_experiment(cfg: ExperimentConfig, *, resume: bool = False, echo=print) -> RunResult | None:
    """Prepare the data, train, test and track one experiment. Returns the trained model and its metrics.

    ``resume``: continue from the checkpoint of this exact config (its run folder) when there is one, else
    train from the start; either way it says which. Without it, the folder's checkpoint is deleted.

    Started by ``torchrun`` with several processes (:mod:`recsys.distributed`), they train together: process 0
    does everything above and returns the result, the others only train with it and return None."""
    from recsys import distributed
    from recsys.trainer import resolve_device

    if distributed.launched_world_size() == 1:
        with run_folder_lock(run_dir_for(cfg)):
            return _train_experiment(cfg, resume=resume, echo=echo)
    with distributed.process_group(resolve_device(cfg.device)) as (dp, device):
        result: RunResult | None = None
        if dp.is_main:
            result = _train_experiment(cfg, resume=resume, echo=echo, dp=dp, device=device)
        else:
            _train_with_process_0(cfg, resume=resume, dp=dp, device=device)
        dp.barrier()  # the others leave the group only after process 0 has tested and logged
        return result


def _train_with_process_0(cfg: ExperimentConfig, *, resume: bool, dp, device: torch.device) -> None:
    """A data-parallel process other than 0: wait for process 0 to prepare the data and the run folder, then
    train the same model on this process's share of the batches (no folder, no MLflow, no validation)."""
    from features import prepare
    from recsys.distributed import DataParallelError
    from recsys.models import build_model
    from recsys.trainer import Trainer, seed_everything

    failed = dp.broadcast(None)
    if failed:
        raise DataParallelError(f"process 0 stopped before training: {failed}")
    error, trainer, checkpoint = None, None, None
    try:
        dataset = prepare(cfg.data)  # process 0 has just prepared it: read from the cache
        seed_everything(cfg.seed)
        model = build_model(cfg.model, dataset.n_users, dataset.n_items)
        prepare_model(model, dataset)
        trainer = Trainer(model, dataset, cfg, run_dir_for(cfg), device=device)
        checkpoint = trainer.read_checkpoint() if resume else None
    except Exception as exc:  # told to every process before anyone trains, then raised here
        error = f"process {dp.rank}: {type(exc).__name__}: {exc}"
    dp.raise_if_any_failed(error)
    assert trainer is not None
    try:
        trainer.fit(resume=resume, checkpoint=checkpoint)
    except RuntimeError as exc:  # above all a lost connection: process 0 stopped (its own error says why)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataParallelError(
            f"process {dp.rank} stopped during training: {first} (when another process stopped first, its "
            "own error line says why)"
        ) from exc


@contextlib.contextmanager
def _others_told_how_setup_went(dp) -> Iterator[None]:
    """Process 0's setup (lock, data, run folder, checkpoint, MLflow run): the other processes wait for it and
    learn whether it failed (and stop) or not (and start). Without ``dp`` it does nothing."""
    try:
        yield
    except BaseException as exc:
        if dp is not None:
            dp.broadcast(f"{type(exc).__name__}: {exc}")
        raise
    if dp is not None:
        dp.broadcast(None)


def _train_experiment(
    cfg: ExperimentConfig, *, resume: bool, echo, dp=None, device: torch.device | None = None
) -> RunResult:
    with contextlib.ExitStack() as stack:
        with _others_told_how_setup_went(dp):
            if dp is not None:
                stack.enter_context(run_folder_lock(run_dir_for(cfg)))
            trainer, checkpoint, tracker, resume_run_id, t_start = _set_up(cfg, resume, echo, dp, device)
        return _run(cfg, trainer, checkpoint, tracker, resume_run_id, t_start, resume, dp)


def _set_up(cfg: ExperimentConfig, resume: bool, echo, dp, device):
    from features import prepare
    from recsys.models import build_model
    from recsys.trainer import Trainer, resolve_device, seed_everything

    t_start = time.perf_counter()
    dataset = prepare(cfg.data)
    dropped = {k: v for k, v in (dataset.manifest.get("dropped") or {}).items() if v}
    echo(
        f"data: {dataset.root} ({dataset.n_users:,} users, {dataset.n_items:,} items, "
        f"{dataset.manifest['counts']}" + (f"; dropped {dropped}" if dropped else "") + ")"
    )  # a temporal split may drop most of its test rows (users or items unseen in training): said here
    seed_everything(cfg.seed)
    device = device or resolve_device(cfg.device)
    model = build_model(cfg.model, dataset.n_users, dataset.n_items)
    prepare_model(model, dataset)
    run_dir = run_dir_for(cfg)
    if not resume and run_dir.exists():
        # after a crash or a kill no --resume hint was printed: say what is lost, and how not to lose it
        unfinished = _unfinished_epoch(run_dir)
        if unfinished is None:
            shutil.rmtree(run_dir)  # a completed run's folder: its model is in the tracking store
        else:  # set aside, not deleted: a forgotten --resume must not cost hours of training
            aside = run_dir.with_name(f"{run_dir.name}{DISCARDED_SUFFIX}")
            shutil.rmtree(aside, ignore_errors=True)  # one such copy per config: the latest
            run_dir.rename(aside)
            epoch, trained = unfinished
            where = (
                f"trained to its end (epoch {epoch}), stopped before it was tested and logged"
                if trained
                else f"checkpoint after epoch {epoch}"
            )
            echo(
                f"warning: the unfinished run in {run_dir} ({where}) is set aside "
                f"as {aside}; to continue it instead, stop this training, rename that folder back and run "
                "`recsys train --resume` with the same config"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, dataset, cfg, run_dir, device=device)
    # Read and check the checkpoint before the MLflow run is reopened: a refusal must not mark that run failed.
    checkpoint = trainer.read_checkpoint() if resume else None
    run_id_file = run_dir / "mlflow_run_id"
    resume_run_id = None
    if checkpoint is not None:
        echo(f"resuming {run_dir} after epoch {checkpoint['state']['epoch']}")
        if run_id_file.exists():
            resume_run_id = run_id_file.read_text().strip() or None
    elif resume:
        others = _other_checkpoints(run_dir, cfg.name)
        echo(
            f"--resume: no checkpoint of this config in {run_dir}; training from the start"
            + (
                f" (checkpoints of other {cfg.name!r} configs, which a changed key sends to another folder: "
                + ", ".join(p.name for p in others[:5])
                + ")"
                if others
                else ""
            )
        )
    if dp is not None and getattr(model, "trainable", True):  # closed-form models are fitted, not stepped
        echo(f"data-parallel: {dp.world_size} processes, each step {dp.world_size} batches (one each)")

    tc = cfg.tracking
    try:
        tracker = RunTracker.start(
            enabled=tc.enabled,
            experiment=tc.experiment,
            uri=tc.uri,
            run_name=cfg.name,
            resume_run_id=resume_run_id,
        )
    except ResumeRunError as exc:
        raise ValueError(
            f"{run_id_file}: {exc}. Point MLFLOW_TRACKING_URI (or tracking.uri) at the store that has it, or "
            "delete this file to log the rest of the training as a new run"
        ) from None
    if tracker.enabled and tracker.experiment != tc.experiment:
        echo(
            f"note: continuing MLflow run {tracker.run_id} in its experiment {tracker.experiment!r}, not in "
            f"tracking.experiment {tc.experiment!r}: MLflow cannot move a run"
        )
    return trainer, checkpoint, tracker, resume_run_id, t_start


def _write_atomic(path: Path, text: str) -> None:
    data = text.encode()

    def write(fh) -> None:
        fh.write(data)

    atomic_write(path, write)


def _run(cfg: ExperimentConfig, trainer, checkpoint, tracker: RunTracker, resume_run_id, t_start, resume, dp):
    from eval import evaluate_model

    model, dataset, run_dir, device = trainer.model, trainer.dataset, trainer.run_dir, trainer.device
    # Not complete until tested and logged again: a finished checkpoint without the marker is kept aside by a
    # training without --resume (a run stopped during its final test or save has its model nowhere else).
    (run_dir / RUN_COMPLETE).unlink(missing_ok=True)
    with tracker:
        if dp is not None:  # the other processes' own setup (a failure stops every one before training)
            dp.raise_if_any_failed(None)
        if tracker.run_id:
            # whole or not at all: a resume reads it to continue this run (a full disk left it empty)
            _write_atomic(run_dir / "mlflow_run_id", tracker.run_id)
        if resume_run_id is None:
            tracker.log_params(cfg.to_dict())
            tracker.log_dict(cfg.to_dict(), "config.json")
            tracker.log_dict(dataset.manifest, "dataset_manifest.json")
            tracker.set_tags(
                {
                    "git_commit": git_commit(),
                    "dataset_manifest_hash": dataset.manifest_hash,
                    "dataset_root": str(dataset.root),
                    "model": cfg.model["name"],
                    "device": str(device),
                    "data_parallel_processes": str(dp.world_size if dp is not None else 1),
                    **machine_tags(),
                }
            )
        else:  # a resumed run keeps where it started; where it went on is a tag of its own
            tracker.set_tags({f"resumed_{k}": v for k, v in machine_tags().items()})
        trainer.tracker = tracker
        state = trainer.fit(resume=resume, checkpoint=checkpoint)
        checkpoint = None  # its tensors (on the device) are in the model now: do not hold a second copy
        # A resumed run's training time is summed over its processes (a finished run resumed again used to
        # log the few seconds of the no-op resume); closed-form models "train" while being prepared.
        train_seconds = state.train_seconds if state.epoch else time.perf_counter() - t_start
        test_metrics = evaluate_model(
            model, dataset, split="test", ks=cfg.eval.ks, block_size=cfg.eval.block_size
        )
        tracker.log_metrics(test_metrics, prefix="test_final/")
        tracker.log_metrics(
            {"train_seconds": train_seconds, "epochs_run": state.epoch, "steps_run": state.step}
        )
        if state.best_epoch >= 0:
            tracker.log_metrics({"best_epoch": state.best_epoch, "best_valid_metric": state.best_metric})
        if state.history:
            import matplotlib.pyplot as plt

            fig = _plot_history(state.history, f"{cfg.name} ({cfg.model['name']})")
            tracker.log_figure(fig, "training_curve.png")
            plt.close(fig)
            tracker.log_dict({"history": state.history}, "history.json")
        if cfg.tracking.log_model:
            with tempfile.TemporaryDirectory() as tmp:
                tracker.log_artifacts(
                    save_model_folder(Path(tmp) / MODEL_ARTIFACT, cfg, model, dataset), MODEL_ARTIFACT
                )
    _write_atomic(run_dir / RUN_COMPLETE, tracker.run_id or "")
    selection = None
    if state.best_epoch >= 0:
        selection = (
            f"weights of epoch {state.best_epoch} of {state.epoch}, best valid {trainer.monitored_metric} "
            f"{state.best_metric:.4f}"
        )
    return RunResult(
        tracker.run_id,
        cfg,
        dataset,
        model,
        test_metrics,
        state.history,
        run_dir,
        train_seconds,
        selection,
        state.best_epoch,
        state.best_metric if state.best_epoch >= 0 else None,
    )


@dataclass
class LoadedRun:
    run_id: str
    config: ExperimentConfig
    dataset: Any
    model: Recommender


def load_run(
    run_id: str, uri: str | None = None, *, require: Callable[[torch.nn.Module], object] | None = None
) -> LoadedRun:
    """Rebuild a trained run from MLflow: its config, its prepared dataset (checked against the manifest hash
    the run logged) and its model with the trained weights, ready for evaluation and export.

    ``uri`` is the tracking store that holds the run (default: ``MLFLOW_TRACKING_URI``, else the embedded
    store under ``$RECSYS_HOME``); a run trained with ``tracking.uri`` set is found there.

    ``require``: called with the model as soon as it is built, before its preparation on the training data
    (RP3beta's item graph takes seconds on Gowalla) and its weights; it raises to refuse a model the caller
    cannot use, so that a command refuses before the slow part."""
    folder = download_run_artifacts(run_id, MODEL_ARTIFACT, uri=uri)
    try:
        return _load_run_folder(run_id, folder, require)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)  # the weights are in memory by now


def _load_run_folder(run_id: str, folder: Path, require=None) -> LoadedRun:
    import yaml

    from features import DataValidationError, PreparedDataset, prepare
    from features.errors import DataSourceError
    from recsys.models import build_model
    from recsys.trainer import load_torch_file

    damaged = f"the run's {MODEL_ARTIFACT!r} artifact is damaged; train the run again"
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:  # a run stopped while its model was logged has some of the files (was: a raw ENOENT)
        raise ValueError(
            f"run {run_id}: its {MODEL_ARTIFACT!r} artifact has no {', '.join(missing)} (a run stopped while "
            f"its model was logged: `recsys train --resume` with its config finishes it); {damaged}"
        )
    _verify_model_folder(run_id, folder, damaged)
    try:
        cfg = validate_config(
            yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")),
            source=f"run {run_id} config.yaml",
        )
        info = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        root, manifest_hash = Path(info["root"]), str(info["manifest_hash"])
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(
            f"run {run_id}: cannot read its config.yaml / dataset.json ({exc}); {damaged}"
        ) from None
    try:
        dataset = PreparedDataset.load(root)
    except DataValidationError:  # missing or damaged: prepare rebuilds it (the hash check below still holds)
        data, recorded = cfg.data, info.get("source_path")
        if recorded and not Path(data.path).expanduser().is_absolute() and Path(recorded).exists():
            data = data.model_copy(update={"path": recorded})  # where the relative path pointed at training
        try:
            dataset = prepare(data)
        except (DataValidationError, DataSourceError) as exc:
            raise ValueError(
                f"run {run_id}: its prepared dataset {root} is gone or damaged, and preparing its data config "
                f"again failed: {exc}"
            ) from None
    if dataset.manifest_hash != manifest_hash and not _same_data_with_pairs_set_aside(
        info.get("manifest"), dataset
    ):
        raise ValueError(
            f"run {run_id} was trained on dataset {manifest_hash[:12]} but preparing its data "
            f"config now gives {dataset.manifest_hash[:12]} ({dataset.root}); the source files changed (or the "
            "code that prepares them)"
        )
    if cfg.data.rating_threshold is not None and dataset.below_threshold is None:
        import warnings

        warnings.warn(
            f"run {run_id}: its prepared data {dataset.root} predates keeping the pairs rated below "
            "data.rating_threshold: serving it recommends such items back; remove that folder to have it "
            "prepared again with them (the run still loads)",
            stacklevel=3,
        )
    model = build_model(cfg.model, dataset.n_users, dataset.n_items)
    if require is not None:
        require(model)
    prepare_model(model, dataset)
    state = load_torch_file(
        folder / "model.pt", f"weights of run {run_id}", damaged, map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    model.eval()
    return LoadedRun(run_id, cfg, dataset, model)


def _same_data_with_pairs_set_aside(trained: Any, dataset: Any) -> bool:
    """A run trained on a ``rating_threshold`` config whose prepared folder was rebuilt since by code that
    keeps the pairs below the threshold otherwise: the same data (splits, vocabularies, features), the new
    folder keeping those pairs aside (``below_threshold``; since 2026-12-02) with the period of each (since
    2026-12-05). Anything else that differs is another dataset."""
    from features.dataset import BELOW_THRESHOLD

    now = dataset.manifest
    if not isinstance(trained, dict) or "below_threshold_rows" not in now:
        return False

    def core(manifest: dict[str, Any]) -> str:
        body = {
            k: v
            for k, v in manifest.items()
            if k not in ("provenance", "content_hash", "below_threshold_rows")
        }
        body["files"] = [f for f in body.get("files", []) if f != BELOW_THRESHOLD]
        body["columns"] = {k: v for k, v in (body.get("columns") or {}).items() if k != BELOW_THRESHOLD}
        return json.dumps(body, sort_keys=True, default=str)

    return core(trained) == core(now)


def default_index_dir(run_id: str) -> Path:
    return recsys_home() / "indexes" / run_id


class NotIndexableError(ValueError):
    """A model whose scores are not inner products of user and item vectors (e.g. RP3beta): no FAISS index."""


_NO_INDEX_HINT = (
    "(`recsys recommend --user` and `recsys evaluate --run` score such a run with its scorer, "
    "without an index)"
)


def require_indexable(model: torch.nn.Module) -> None:
    """A :class:`NotIndexableError` for a model whose class says it has no index (``indexable = False``):
    the ``require`` of :func:`load_run` for the commands that build an index, so that they refuse before
    the model is fitted on the training data (EASE on Gowalla: about 7 minutes and 6.7 GB)."""
    if not getattr(type(model), "indexable", True):
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        raise NotIndexableError(
            f"model {name!r} cannot be indexed: its scores are not inner products of user and item vectors "
            f"{_NO_INDEX_HINT}"
        )


def scorer_top_k(run: LoadedRun, user_idx: int, k: int) -> list[tuple[int, float]]:
    """The top ``k`` ``(item index, score)`` of one user from the model's own scorer, every known item of the
    user (:meth:`~features.PreparedDataset.known_matrix`, as a served index excludes them) left out: serving without an index, for
    models that have none (:class:`NotIndexableError`). Fewer than k when the catalogue runs out."""
    scores, items = scorer_top_k_many(run, [user_idx], k)
    return [(int(i), float(s)) for s, i in zip(scores[0], items[0], strict=True) if i >= 0]


def scorer_top_k_many(run: LoadedRun, user_idx, k: int, *, exclude_known: bool = True):
    """:func:`scorer_top_k` for B users at once: ``(scores, items)``, float64 [B, K] and int64 [B, K] item
    indices, ``K = min(k, n_items)``, best first, equal scores by item index (the served index's rule); a
    row with fewer than K unknown items is padded with ``(-inf, -1)``. ``exclude_known=False`` ranks the
    user's known items too. Memory: B x n_items scores."""
    import numpy as np

    from recsys.explain import check_indices
    from serving._topk import ExcludedItems, check_k, dense_top_k

    k = check_k(k)  # k=-1 sliced off the last item
    ds, model = run.dataset, run.model
    rows = check_indices(
        list(user_idx), ds.n_users, "user_idx", "user"
    )  # -1 scored the last user, unfiltered
    if not rows:
        width = min(k, ds.n_items)
        return np.zeros((0, width)), np.zeros((0, width), dtype=np.int64)
    with torch.no_grad():
        scores = model.scorer()(torch.tensor(rows, dtype=torch.long)).detach().cpu().double().numpy()
    known = (
        ExcludedItems.from_sparse(ds.known_matrix()[rows], len(rows), ds.n_items) if exclude_known else None
    )
    return dense_top_k(scores, k, known)


def build_run_index(
    run: LoadedRun, out_dir: Path | None = None, *, nlist: int | None = None, nprobe: int | None = None
) -> Path:
    """Export a run's embeddings into a FAISS index folder with the item id map, titles and seen items;
    exact, or an inverted file of ``nlist`` lists (``nprobe`` searched per query; see
    :func:`serving.build_index`)."""
    import numpy as np

    from serving import build_index

    ds, model = run.dataset, run.model
    model.eval()  # exported embeddings without dropout
    try:
        with torch.no_grad():
            users, items = model.embeddings()
    except NotImplementedError as exc:  # e.g. RP3beta: scores are not inner products of dense vectors
        raise NotIndexableError(
            f"model {run.config.model['name']!r} cannot be indexed: {exc} {_NO_INDEX_HINT}"
        ) from None
    seen = ds.known_matrix()  # the splits, and items rated below data.rating_threshold
    vocab_items = ds.item_vocab.sort("item_idx")
    titles = vocab_items["title"].to_list() if "title" in vocab_items.columns else None
    return build_index(
        np.ascontiguousarray(items.detach().cpu().numpy(), dtype=np.float32),
        vocab_items["item_id"].to_list(),
        out_dir or default_index_dir(run.run_id),
        user_emb=np.ascontiguousarray(users.detach().cpu().numpy(), dtype=np.float32),
        user_ids=ds.user_vocab.sort("user_idx")["user_id"].to_list(),
        seen=seen,
        item_titles=titles,
        run_id=run.run_id,
        # models whose score is a cosine (the SSL two-tower) export unit vectors and mark the index normalised,
        # so query vectors given later (recommend_for_vector) are normalised too
        normalize=bool(getattr(model, "cosine_scores", False)),
        bias_columns=int(getattr(model, "bias_columns", 0)),
        nlist=nlist,
        nprobe=nprobe,
        metadata={
            "model": run.config.model["name"],
            "dataset_manifest_hash": ds.manifest_hash,
            # sequence models also answer item-id sequences (Retriever.recommend_for_sequences); positions of
            # the index are the model's item indices, as the items are written in item_idx order above
            "sequence_queries": callable(getattr(model, "encode_sequences", None)),
        },
    )


def sequence_query_encoder(model: torch.nn.Module, max_len: int | None = None) -> SequenceQueryEncoder:
    """The query side of a sequence model (SASRec, GRU4Rec, DuoRec, ICSRec, ICLRec, BERT4Rec) as a
    ``serving.retriever.SequenceEncoder``: lists of item indices (oldest first) -> ``float32[B, d]`` query
    embeddings, the model's ``encode_sequences`` of the last ``max_len`` items (default: the model's input
    length), left-padded."""
    from recsys.models.sequential import NextItemRecommender

    if not isinstance(model, NextItemRecommender):  # the models with encode_sequences
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        raise ValueError(
            f"model {name!r} has no sequence encoder: only sequence models answer item sequences"
        )
    return SequenceQueryEncoder(
        model.encode_sequences, max_len or model.sequence_config.max_len, model.n_items
    )


class SequenceQueryEncoder:
    """A sequence model's query side for serving (made by :func:`sequence_query_encoder`): lists of item
    indices -> ``float32[B, d]``; ``n_items``: the item indices it can encode, which the Retriever checks
    by name."""

    def __init__(self, encode: Callable[[Any], torch.Tensor], length: int, n_items: int) -> None:
        self.encode = encode
        self.length = length
        self.n_items = n_items

    def __call__(self, sequences: list) -> np.ndarray:
        import numpy as np

        from features.sequences import pad_sequences

        n_items = self.n_items
        for given in sequences:  # [True, 2] became items 1 and 2 (a boolean array is refused below by dtype)
            if not isinstance(given, np.ndarray) and any(isinstance(x, bool | np.bool_) for x in given):
                raise ValueError("item positions must be integers, got a boolean")
        rows = [np.asarray(s) for s in sequences]
        for row in rows:  # 1.7 was read as item 1 (an int64 cast), though encode_sequences refuses it
            if row.size and (row.ndim != 1 or not np.issubdtype(row.dtype, np.integer)):
                raise ValueError(f"item positions must be 1-D integers, got {row.dtype} of shape {row.shape}")
            if row.size and row.min() < 0:  # -1 is the padding: [-1, 2] was encoded as [2]
                raise ValueError(f"item positions must be >= 0, got {sorted(set(row[row < 0].tolist()))[:5]}")
        padded = pad_sequences([row.astype(np.int64).tolist() for row in rows], max_len=self.length)
        if (padded >= n_items).any():
            raise ValueError(f"item positions {sorted(set(padded[padded >= n_items].tolist()))[:10]} are beyond "
                             f"the model's {n_items} items")  # fmt: skip
        with torch.no_grad():
            return self.encode(padded).detach().cpu().numpy().astype(np.float32)

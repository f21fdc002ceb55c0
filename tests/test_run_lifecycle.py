"""A run's life around the trainer: resume messages, refusals that leave the MLflow run alone, damaged files,
one training per run folder, tracking-store errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recsys.cli import main
from tests.test_cli import threshold_config
from tests.test_trainer import make_cfg, write_synthetic_interactions


def _config(tmp_path: Path, epochs: int = 2, **tracking) -> Path:
    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=epochs)
    raw["tracking"] = {"experiment": "lifecycle", **tracking}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run_dir(cfg_path: Path) -> Path:
    from recsys.config import load_config
    from recsys.pipeline import run_dir_for

    return run_dir_for(load_config(cfg_path))


def _status(run_id: str) -> str:
    import mlflow

    from recsys.paths import default_tracking_uri

    mlflow.set_tracking_uri(default_tracking_uri())
    return mlflow.get_run(run_id).info.status


def test_resume_says_what_it_resumes(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert main(["train", "-c", str(cfg), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"--resume: no checkpoint of this config in {_run_dir(cfg)}; training from the start" in out
    assert main(["train", "-c", str(cfg), "--resume"]) == 0
    assert f"resuming {_run_dir(cfg)} after epoch 2" in capsys.readouterr().out
    # a changed key sends the config to another folder: the old checkpoint is named, not silently ignored
    assert main(["train", "-c", str(cfg), "--resume", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "no checkpoint of this config" in out and "configs, which a changed key" in out
    assert _run_dir(cfg).name in out


def test_a_resumed_run_stays_in_its_experiment_and_says_so(tmp_path, capsys):
    import mlflow

    cfg = _config(tmp_path, epochs=1)
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert main(["train", "-c", str(cfg), "--resume", "tracking.experiment=other"]) == 0
    out = capsys.readouterr().out
    assert (
        f"continuing MLflow run {run_id} in its experiment 'lifecycle', not in tracking.experiment 'other'"
        in out
    )
    assert mlflow.get_experiment_by_name("other") is None  # no empty experiment made on the way


def test_a_refused_resume_leaves_the_finished_run_alone(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    checkpoint = _run_dir(cfg) / "checkpoint.pt"
    good = checkpoint.read_bytes()
    for damaged in (b"", good[: len(good) // 2]):
        checkpoint.write_bytes(damaged)
        assert main(["train", "-c", str(cfg), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"{checkpoint}: cannot read the training checkpoint: the file is damaged or truncated" in err
        assert "remove it to train from the start" in err
        assert _status(run_id) == "FINISHED"  # the refusal came before the MLflow run was reopened


def test_a_flipped_byte_in_a_checkpoint_or_best_weights_is_refused(tmp_path, capsys):
    """torch checks no CRC: a flipped bit inside tensor data used to resume (or be tested) with one weight
    changed. The zip records' CRC-32s are checked before loading."""
    import torch

    from recsys.trainer import BEST, CHECKPOINT

    cfg = _config(tmp_path)
    assert main(["train", "-c", str(cfg)]) == 0
    capsys.readouterr()
    run_dir = _run_dir(cfg)
    for name, what in ((CHECKPOINT, "training checkpoint"), (BEST, "best weights on validation")):
        path = run_dir / name
        good = path.read_bytes()
        state = torch.load(path, map_location="cpu", weights_only=False)
        weights = state["model"] if name == CHECKPOINT else state
        tensor = max(weights.values(), key=lambda t: t.numel())
        at = good.index(tensor.numpy().tobytes())  # the tensor's own bytes, stored uncompressed
        flipped = bytearray(good)
        flipped[at + 5] ^= 0x10
        path.write_bytes(bytes(flipped))
        assert torch.load(path, map_location="cpu", weights_only=False) is not None  # torch alone loads it
        if name == CHECKPOINT:
            assert main(["train", "-c", str(cfg), "--resume"]) == 2
            err = capsys.readouterr().err
        else:
            from recsys.trainer import load_torch_file

            with pytest.raises(ValueError) as info:
                load_torch_file(path, what, "train again")
            err = str(info.value)
        assert f"{path}: cannot read the {what}: the file is damaged or truncated" in err
        assert "fails its CRC-32 check" in err
        path.write_bytes(good)


def test_the_crc_checked_file_is_the_one_loaded_and_crc_less_files_load(tmp_path, monkeypatch):
    import torch

    import recsys.trainer as trainer
    from recsys.trainer import atomic_torch_save, load_torch_file

    path = tmp_path / "w.pt"
    atomic_torch_save({"w": torch.ones(3)}, path)
    real = trainer._failed_zip_record

    def check_then_replace(fh):
        out = real(fh)
        atomic_torch_save(
            {"w": torch.zeros(3)}, path
        )  # another writer replaces the file right after the check
        return out

    monkeypatch.setattr(trainer, "_failed_zip_record", check_then_replace)
    assert torch.equal(load_torch_file(path, "weights", "remove it")["w"], torch.ones(3))  # the checked file
    monkeypatch.setattr(trainer, "_failed_zip_record", real)
    # torch may be told to write no CRCs (0 for every record): such a file is good, not "damaged"
    torch.serialization.set_crc32_options(False)
    try:
        atomic_torch_save({"w": torch.full((3,), 2.0)}, path)
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(load_torch_file(path, "weights", "remove it")["w"], torch.full((3,), 2.0))


def test_damaged_best_weights_and_model_artifact_are_named(tmp_path, capsys):
    from recsys.trainer import BEST, load_torch_file

    cfg = _config(tmp_path)
    best = tmp_path / BEST
    best.write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(
        ValueError, match=r"best_model\.pt: cannot read the best weights.*damaged or truncated"
    ):
        load_torch_file(best, "best weights", "train again")
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    from recsys.paths import recsys_home

    (weights,) = (p for p in (recsys_home() / "mlartifacts").rglob("model.pt") if run_id in p.parts)
    good = weights.read_bytes()
    flipped = bytearray(good)
    flipped[-2000] ^= 1  # inside the tensor data: torch checks no CRC, so this loaded with one weight changed
    weights.write_bytes(bytes(flipped))
    assert main(["evaluate", "--run", run_id]) == 2
    err = capsys.readouterr().err
    assert f"run {run_id}: model.pt differs from its sha256 in checksums.json" in err
    assert "artifact is damaged; train the run again" in err
    # a run logged before the checksums existed: a truncated file is still named
    (weights.parent / "checksums.json").unlink()
    weights.write_bytes(good[:3000])
    assert main(["evaluate", "--run", run_id]) == 2
    err = capsys.readouterr().err
    assert f"cannot read the weights of run {run_id}: the file is damaged or truncated" in err


def test_one_training_per_run_folder(tmp_path, capsys):
    from recsys.pipeline import run_folder_lock

    cfg = _config(tmp_path)
    with run_folder_lock(_run_dir(cfg)):
        assert main(["train", "-c", str(cfg)]) == 2
        assert "another training of this config is running" in capsys.readouterr().err
    assert main(["train", "-c", str(cfg)]) == 0  # released


def test_resume_of_a_run_the_store_does_not_have(tmp_path, capsys):
    cfg = _config(tmp_path, epochs=1)
    assert main(["train", "-c", str(cfg)]) == 0
    capsys.readouterr()
    run_id_file = _run_dir(cfg) / "mlflow_run_id"
    run_id_file.write_text("f" * 32)
    assert main(["train", "-c", str(cfg), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{run_id_file}: MLflow run {'f' * 32} cannot be continued in the store" in err
    assert "delete this file" in err


def test_a_store_mlflow_refuses_is_one_error_line(tmp_path, capsys, monkeypatch):
    # MLflow 3 refuses plain-folder stores; the error is a line naming MLflow, not a traceback, and evaluate
    # does not report it as a missing run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "afile"))
    cfg = _config(tmp_path, epochs=1)
    assert main(["train", "-c", str(cfg)]) == 2
    assert capsys.readouterr().err.startswith("error: MLflow: ")
    assert main(["evaluate", "--run", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: MLflow store {tmp_path / 'afile'}: ") and "no MLflow run" not in err


def test_a_home_with_a_question_mark_keeps_its_store(tmp_path, monkeypatch):
    from recsys.tracking import RunTracker

    home = tmp_path / "exp?1"
    monkeypatch.setenv("RECSYS_HOME", str(home))
    with RunTracker.start(experiment="q", run_name="r") as tracker:
        tracker.log_metrics({"a": 1.0})
    assert (home / "mlflow.db").is_file()  # SQLAlchemy read "?1/mlflow.db" as options of the store "exp"
    assert not (tmp_path / "exp").exists()
    stray = tmp_path / "exp%3F1"  # MLflow's own empty folder, if it makes one (see embedded_tracking_uri)
    assert not stray.exists() or not any(stray.iterdir())


def test_replayed_epochs_are_logged_once(tmp_path):
    """Killed after epoch 3 with a checkpoint every 2 epochs: the resume replays epoch 3 and must not log it
    a second time."""
    import mlflow

    from recsys.tracking import RunTracker
    from tests.test_trainer import build

    class Crash(Exception):
        pass

    class CrashAfterEpoch3:
        def on_epoch_end(self, trainer, epoch, record):
            if epoch == 2:
                raise Crash

    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=4, checkpoint_every=2)
    with pytest.raises(Crash), RunTracker.start(experiment="replay") as tracker:
        trainer = build(raw, tmp_path / "run")
        trainer.tracker, run_id = tracker, tracker.run_id
        trainer.hooks.append(CrashAfterEpoch3())
        trainer.fit()
    with RunTracker.start(experiment="replay", resume_run_id=run_id) as tracker:
        trainer = build(raw, tmp_path / "run")
        trainer.tracker = tracker
        assert trainer.fit(resume=True).epoch == 4
    for key in ("epoch_time_s", "train/loss"):
        steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)]
        assert sorted(steps) == [1, 2, 3, 4], key


def test_only_damaged_files_are_called_damaged(tmp_path, monkeypatch):
    """Memory, device and permission errors while loading a good checkpoint must not advise removing it."""
    import torch

    from recsys.trainer import atomic_torch_save, load_torch_file

    path = tmp_path / "w.pt"
    atomic_torch_save({"weight": torch.ones(400, 2)}, path)
    good = path.read_bytes()
    for damaged in (b"", good[:1500], b"\0" * len(good), good.replace(b"weight", b"weig\xfft"), b"hello"):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match="damaged or truncated"):
            load_torch_file(path, "weights", "remove it", map_location="cpu")
    path.write_bytes(good)
    for error in (
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
        RuntimeError(
            "Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False"
        ),
        PermissionError(13, "Permission denied"),
        OSError(5, "Input/output error"),
        MemoryError(),
        ModuleNotFoundError("No module named 'numpy._core'"),  # a checkpoint from another NumPy: not damage
    ):

        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(torch, "load", fail)
        with pytest.raises(type(error)):
            load_torch_file(path, "weights", "remove it")


def test_a_run_whose_prepared_data_was_damaged_is_evaluated_after_a_rebuild(tmp_path, capsys):
    from recsys.paths import recsys_home

    cfg = _config(tmp_path, epochs=1)
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert main(["evaluate", "--run", run_id, "--json"]) == 0
    before = capsys.readouterr().out
    (train,) = (recsys_home() / "prepared").glob("*/train.parquet")
    data = bytearray(train.read_bytes())
    data[len(data) // 2] ^= 1
    train.write_bytes(bytes(data))
    assert main(["evaluate", "--run", run_id, "--json"]) == 0  # refused by the seal, rebuilt by prepare
    assert capsys.readouterr().out == before


def test_library_refusals_of_a_run_are_exceptions_not_exits(tmp_path, capsys):
    """load_run and build_run_index are embedded in services: a refusal raised SystemExit, which a service's
    `except Exception` does not catch, so the process ended."""
    from recsys.pipeline import build_run_index, load_run

    cfg = _config(tmp_path, epochs=1)
    raw = yaml.safe_load(cfg.read_text())
    raw["model"] = {"name": "rp3beta"}  # scores are not inner products: there is no index to build
    rp3 = tmp_path / "rp3.yaml"
    rp3.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(rp3)]) == 0
    rp3_run = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    with pytest.raises(ValueError, match="model 'rp3beta' cannot be indexed"):
        build_run_index(load_run(rp3_run), tmp_path / "idx")
    assert main(["index", "--run", rp3_run, "--out", str(tmp_path / "idx")]) == 2
    assert "error: model 'rp3beta' cannot be indexed" in capsys.readouterr().err
    # recommend serves it from its scorer (it failed with the index refusal): the user's known items left out
    assert main(["recommend", "--run", rp3_run, "--user", "u3", "--k", "5"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip()[:2].rstrip(".").isdigit()]
    got = [x.split("(item ")[1].split(",")[0] for x in lines]
    assert main(["recommend", "--run", rp3_run, "--user", "u3", "--k", "5", "--json"]) == 0
    import json

    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)] == got
    run = load_run(rp3_run)
    ds = run.dataset
    u = int(ds.user_vocab.filter(ds.user_vocab["user_id"] == "u3")["user_idx"][0])
    from recsys.pipeline import scorer_top_k

    for bad in (-1, ds.n_users):  # -1 scored the last user and left out none of their items
        with pytest.raises(KeyError, match=rf"user_idx: user indices \[{bad}\] out of range"):
            scorer_top_k(run, bad, 5)
    with pytest.raises(ValueError, match="k must be a positive integer, got -1"):
        scorer_top_k(run, u, -1)  # it returned every item but the last
    import numpy as np
    import torch

    scores = run.model.scorer()(torch.tensor([u]))[0].double().numpy()
    known = sum(ds.matrix(split) for split in ("train", "valid", "test"))
    scores[known[u].indices] = -np.inf
    order = np.lexsort((np.arange(scores.size), -scores))[:5]
    ids = ds.item_vocab.sort("item_idx")["item_id"].to_list()
    assert got == [ids[i] for i in order]
    # --sequence: the model reads a session as an item set, as it reads a user's history, so u3's items (in
    # any order) give u3's list; it was refused ("no sequence encoder") before item-item models answered it
    history = [ids[i] for i in known[u].indices[::-1]]
    assert main(["recommend", "--run", rp3_run, "--sequence", *history, "--k", "5", "--json"]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)] == got
    assert main(["recommend", "--run", rp3_run, "--sequence", "i1", "nope"]) == 2
    assert "unknown item id: 'nope'" in capsys.readouterr().err
    assert main(["recommend", "--run", rp3_run, "--user", "nobody"]) == 2
    assert "give their items with --sequence" in capsys.readouterr().err
    # --similar: the row of its walk matrix, as ItemItemRecommender.similar_items gives it
    assert main(["recommend", "--run", rp3_run, "--similar", "i5", "--k", "4", "--json"]) == 0
    weights, found = run.model.similar_items([ids.index("i5")], 4)
    assert [(r["item_id"], r["score"]) for r in json.loads(capsys.readouterr().out)] == [
        (ids[j], float(w)) for w, j in zip(weights[0], found[0], strict=True)
    ]
    assert main(["recommend", "--run", rp3_run, "--similar", "nope"]) == 2
    assert "unknown item id: 'nope'" in capsys.readouterr().err
    assert main(["recommend", "--run", rp3_run, "--similar", "i5", "--metric", "cosine"]) == 2
    assert "item-item model" in capsys.readouterr().err

    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    csv = tmp_path / "x.csv"
    csv.write_text(csv.read_text().replace("u0,", "u1000,", 1))  # the source data changed since training
    import shutil

    from recsys.paths import recsys_home

    for folder in (recsys_home() / "prepared").iterdir():
        shutil.rmtree(folder)  # and the run's prepared folder is gone, so it is prepared again
    with pytest.raises(ValueError, match=f"run {run_id} was trained on dataset .* the source files changed"):
        load_run(run_id)
    assert main(["evaluate", "--run", run_id]) == 2
    assert "the source files changed" in capsys.readouterr().err


def test_train_seconds_add_up_over_resumes(tmp_path, capsys, monkeypatch):
    """A finished run resumed again logged the few seconds of the no-op resume as its train_seconds."""
    import time

    import mlflow

    from recsys.trainer import Trainer

    cfg = _config(tmp_path)
    real = Trainer.evaluate

    def slow_evaluate(self, split):
        time.sleep(0.5)  # two evaluations: at least a second of training
        return real(self, split)

    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    monkeypatch.setattr(Trainer, "evaluate", real)
    assert main(["train", "-c", str(cfg), "--resume"]) == 0
    _status(run_id)  # points MLflow at the store
    history = [m.value for m in mlflow.MlflowClient().get_metric_history(run_id, "train_seconds")]
    assert len(history) == 2 and history[0] >= 1.0
    assert history[1] == pytest.approx(history[0], abs=0.5)  # the same training, not the resume's seconds


def test_a_resumed_run_keeps_where_it_started_and_says_where_it_went_on(tmp_path, capsys, monkeypatch):
    """The same config and seed can train another model on another CPU: a run's tags say where it started,
    and a resume adds where it went on."""
    import mlflow

    import recsys.tracking

    cfg = _config(tmp_path, epochs=1)
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    monkeypatch.setattr(recsys.tracking, "cpu_model", lambda: "Another CPU @ 1.00GHz")
    assert main(["train", "-c", str(cfg), "--resume"]) == 0
    _status(run_id)  # points MLflow at the store
    tags = mlflow.get_run(run_id).data.tags
    assert tags["cpu"] not in ("", "Another CPU @ 1.00GHz")
    assert (
        tags["resumed_cpu"] == "Another CPU @ 1.00GHz"
        and tags["resumed_torch_version"] == tags["torch_version"]
    )


def test_a_run_with_a_relative_data_path_loads_from_another_folder(tmp_path, capsys, monkeypatch):
    """``data.path: x.csv`` was read from the folder the run was trained in; once its prepared folder was gone,
    loading the run from another folder looked for x.csv there, and the error named neither the run nor the
    path it had been trained on."""
    import shutil

    from recsys.paths import recsys_home

    cfg = _config(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["data"]["path"] = "x.csv"  # relative to the folder train runs in
    cfg.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-c", "cfg.yaml"]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert main(["evaluate", "--run", run_id, "--json"]) == 0
    expected = capsys.readouterr().out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for folder in (recsys_home() / "prepared").iterdir():
        shutil.rmtree(folder)  # prepared again, from the file the run was trained on
    assert main(["evaluate", "--run", run_id, "--json"]) == 0
    assert capsys.readouterr().out == expected
    for folder in (recsys_home() / "prepared").iterdir():
        shutil.rmtree(folder)
    (tmp_path / "x.csv").unlink()  # now the data is gone too: the error says which run and what failed
    assert main(["evaluate", "--run", run_id]) == 2
    err = capsys.readouterr().err
    assert f"run {run_id}: its prepared dataset " in err and "preparing its data config again failed" in err


def test_a_threshold_run_trained_before_the_pairs_were_kept_aside_still_loads(tmp_path, capsys, monkeypatch):
    """Prepared data keeps the pairs rated below data.rating_threshold since 2026-12-02. A run trained on an
    older folder loads from it with a warning (serving it recommends those items back), and, once that
    folder is gone, from the rebuilt one: the same data, the pairs kept aside besides (it was refused as
    "the source files changed")."""
    import importlib
    import shutil

    from recsys.paths import recsys_home
    from recsys.pipeline import load_run

    csv = tmp_path / "r.csv"
    rows = [f"u{u},i{i},{(u * 7 + i * 3) % 5 + 1}" for u in range(30) for i in range(12) if (u + i) % 3]
    csv.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    cfg = threshold_config(tmp_path, csv, 3)
    module = importlib.import_module("features.prepare")  # `features.prepare` is also the function
    real = module.build_tables

    def as_before(cfg, files):  # the folder as the code before 2026-12-02 wrote it
        tables, manifest = real(cfg, files)
        tables.pop("below_threshold")
        manifest.pop("below_threshold_rows")
        manifest["files"].remove("below_threshold")
        manifest["columns"].pop("below_threshold")
        return tables, manifest

    monkeypatch.setattr(module, "build_tables", as_before)
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    monkeypatch.setattr(module, "build_tables", real)
    with pytest.warns(UserWarning, match=f"run {run_id}: its prepared data .* predates keeping the pairs"):
        old = load_run(run_id)
    assert old.dataset.below_threshold is None
    for folder in (recsys_home() / "prepared").iterdir():
        shutil.rmtree(folder)
    rebuilt = load_run(run_id)
    assert (
        rebuilt.dataset.below_threshold.height > 0
        and rebuilt.dataset.manifest_hash != old.dataset.manifest_hash
    )
    assert all(rebuilt.dataset.split(s).equals(old.dataset.split(s)) for s in ("train", "valid", "test"))


def test_a_threshold_run_trained_before_the_periods_were_recorded_still_loads(tmp_path, capsys, monkeypatch):
    """Since 2026-12-05 each pair rated below the threshold records its period (``split``); the cache key
    changed with it, so a run trained on a folder without them loads from the rebuilt one once its own is
    gone: the same data, the new column besides."""
    import importlib
    import shutil

    from recsys.paths import recsys_home
    from recsys.pipeline import load_run

    csv = tmp_path / "r.csv"
    rows = [f"u{u},i{i},{(u * 7 + i * 3) % 5 + 1}" for u in range(30) for i in range(12) if (u + i) % 3]
    csv.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    cfg = threshold_config(tmp_path, csv, 3)
    module = importlib.import_module("features.prepare")
    real = module.build_tables

    def as_before(cfg, files):  # the folder as the code of 2026-12-02 to 12-04 wrote it
        tables, manifest = real(cfg, files)
        tables["below_threshold"] = tables["below_threshold"].drop("split")
        manifest["columns"]["below_threshold"].remove("split")
        return tables, manifest

    monkeypatch.setattr(module, "build_tables", as_before)
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    monkeypatch.setattr(module, "build_tables", real)
    old = load_run(run_id)
    assert "split" not in old.dataset.below_threshold.columns
    for folder in (recsys_home() / "prepared").iterdir():
        shutil.rmtree(folder)
    rebuilt = load_run(run_id)
    assert rebuilt.dataset.manifest_hash != old.dataset.manifest_hash
    assert rebuilt.dataset.below_threshold.drop("split").equals(old.dataset.below_threshold)
    assert all(rebuilt.dataset.split(s).equals(old.dataset.split(s)) for s in ("train", "valid", "test"))


def test_training_again_without_resume_empties_the_run_folder(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert main(["train", "-c", str(cfg)]) == 0
    stale = _run_dir(cfg) / "stale-from-the-last-training.txt"
    stale.write_text("x")
    assert main(["train", "-c", str(cfg)]) == 0
    assert not stale.exists()  # the folder was deleted: no checkpoint or best weights of the last run kept


def test_resuming_a_run_deleted_in_mlflow_names_the_run_id_file(tmp_path, capsys):
    import mlflow

    from recsys.paths import default_tracking_uri

    cfg = _config(tmp_path)
    assert main(["train", "-c", str(cfg)]) == 0
    capsys.readouterr()
    run_id_file = _run_dir(cfg) / "mlflow_run_id"
    mlflow.MlflowClient(default_tracking_uri()).delete_run(run_id_file.read_text().strip())
    assert main(["train", "-c", str(cfg), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{run_id_file}: MLflow run " in err and "cannot be continued" in err and "delete this file" in err


def test_build_run_index_exports_embeddings_in_eval_mode(tmp_path):
    from recsys.config import validate_config
    from recsys.pipeline import LoadedRun, build_run_index
    from tests.test_trainer import build

    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=1)
    trainer = build(raw, tmp_path / "run")
    model = trainer.model
    modes = []
    real = model.embeddings

    def spy():
        modes.append(model.training)
        return real()

    model.embeddings = spy
    model.train()  # as a model is left after training
    build_run_index(LoadedRun("r" * 32, validate_config(raw), trainer.dataset, model), tmp_path / "index")
    assert modes == [False]


def test_a_run_stopped_during_its_final_save_is_set_aside_not_deleted(tmp_path, capsys, monkeypatch):
    # its checkpoint says the training finished, but its model never reached MLflow: training again without
    # --resume deleted the folder (the weights of every epoch), though the interruption said it was kept
    import torch

    from recsys.pipeline import DISCARDED_SUFFIX, RUN_COMPLETE
    from recsys.tracking import RunTracker
    from recsys.trainer import CHECKPOINT

    cfg = _config(tmp_path)
    run_dir = _run_dir(cfg)

    def stopped(self, folder, artifact_path=None):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(RunTracker, "log_artifacts", stopped)
        assert main(["train", "-c", str(cfg)]) == 130
    assert "the checkpoint is kept" in capsys.readouterr().err
    assert torch.load(run_dir / CHECKPOINT, weights_only=False)["state"]["finished"]
    assert not (run_dir / RUN_COMPLETE).exists()
    assert main(["train", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    aside = run_dir.with_name(run_dir.name + DISCARDED_SUFFIX)
    assert f"the unfinished run in {run_dir} (trained to its end (epoch 2), stopped before it was" in out
    assert (aside / CHECKPOINT).is_file() and (run_dir / RUN_COMPLETE).is_file()
    # a completed run's folder is emptied as before
    assert main(["train", "-c", str(cfg)]) == 0
    assert "set aside" not in capsys.readouterr().out


def test_a_model_artifact_missing_a_file_is_named(tmp_path, capsys):
    # a run stopped while its model was uploaded has some of its files: evaluate said only
    # "[Errno 2] No such file or directory: '/tmp/recsys-run-.../model/model.pt'", a folder already deleted
    from recsys.paths import recsys_home

    cfg = _config(tmp_path, epochs=1)
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    (weights,) = (p for p in (recsys_home() / "mlartifacts").rglob("model.pt") if run_id in p.parts)
    for name in ("model.pt", "config.yaml"):
        (weights.parent / name).unlink()
    assert main(["evaluate", "--run", run_id]) == 2
    err = capsys.readouterr().err
    assert f"error: run {run_id}: its 'model' artifact has no model.pt, config.yaml" in err
    assert "recsys train --resume" in err and "No such file" not in err


def test_a_failed_write_of_the_run_id_file_keeps_the_run_to_continue(tmp_path, capsys, monkeypatch):
    # the disk filled up while `--resume` rewrote mlflow_run_id: the file was left empty, and the next
    # --resume logged the rest of the training as a new MLflow run
    import builtins
    import errno
    import io

    cfg = _config(tmp_path)
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    real_open = builtins.open

    class DiskFull(io.StringIO):
        def write(self, *args):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "mlflow_run_id" in str(file) and any(c in mode for c in "wxa"):
            handle.close()  # opened (and so emptied, with "w") before the disk turned out full
            return DiskFull()
        return handle

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", full_open)
        m.setattr(io, "open", full_open)
        assert main(["train", "-c", str(cfg), "--resume"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert (_run_dir(cfg) / "mlflow_run_id").read_text() == run_id
    assert main(["train", "-c", str(cfg), "--resume"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"MLflow run: {run_id}"


def test_a_finished_run_whose_model_was_removed_is_not_said_to_have_logged_none(tmp_path, capsys):
    import shutil

    from recsys.paths import recsys_home

    cfg = _config(tmp_path, epochs=1)
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    (weights,) = (p for p in (recsys_home() / "mlartifacts").rglob("model.pt") if run_id in p.parts)
    shutil.rmtree(weights.parent)
    assert main(["evaluate", "--run", run_id]) == 2
    err = capsys.readouterr().err
    assert "has no artifact 'model'; it was trained with tracking.log_model: true" in err
    assert "log_model: false saves no model" not in err
    # one trained without its model is still told so
    (tmp_path / "nomodel").mkdir()
    assert main(["train", "-c", str(_config(tmp_path / "nomodel", epochs=1, log_model=False))]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert main(["evaluate", "--run", run_id]) == 2
    assert "a run trained with tracking.log_model: false saves no model" in capsys.readouterr().err

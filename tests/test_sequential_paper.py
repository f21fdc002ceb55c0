"""bench/sequential_paper.py: resumable paper runs, tested under both evaluation protocols."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_models_icsrec import icsrec_cfg
from tests.test_models_sasrec import write_cyclic_sequences

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import sequential_paper  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny_repo(tmp_path, monkeypatch):
    """A repository-like folder with configs/tiny_{sasrec,icsrec}.yaml on synthetic sequences."""
    data = write_cyclic_sequences(tmp_path / "d", n_users=60, n_items=300)
    (tmp_path / "configs").mkdir()
    for model in ("sasrec", "icsrec"):
        raw = icsrec_cfg(data, epochs=3)
        raw["name"] = f"tiny-{model}"
        raw["model"]["name"] = model
        if model == "sasrec":
            for key in ("intents",):
                raw["model"].pop(key)
        raw["eval"] = {"ks": [5, 20], "block_size": 64}
        raw["train"]["early_stopping"] = {"metric": "ndcg@20", "patience": 5}
        raw["data"]["split"] = {"protocol": "leave_one_out"}
        (tmp_path / "configs" / f"tiny_{model}.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(sequential_paper, "REPO", tmp_path)
    monkeypatch.setattr(sequential_paper, "DATASETS", {"tiny": "tiny"})
    return tmp_path


def test_runs_record_both_protocols_and_are_not_rerun(tiny_repo, capsys, monkeypatch):
    out = tiny_repo / "res.json"
    sequential_paper.main(["--runs", "tiny:sasrec", "tiny:coarse_only", "--seeds", "3", "--out", str(out)])
    res = json.loads(out.read_text())
    assert sorted(k.rsplit(":", 1)[0] for k in res) == ["tiny:coarse_only:s3", "tiny:sasrec:s3"]
    assert all(k.endswith(":" + r["fingerprint"]) for k, r in res.items())
    sas = next(r for r in res.values() if r["variant"] == "sasrec")
    coarse = next(r for r in res.values() if r["variant"] == "coarse_only")
    assert sas["name"] == "tiny-sasrec" and coarse["name"] == "tiny-icsrec-coarse_only"
    assert coarse["overrides"][0] == "model.fine_loss=false"
    for r in (sas, coarse):
        assert r["epochs_run"] == 3 and 1 <= r["best_epoch"] <= 3
        assert (
            r["seconds_per_epoch"] > 0 and r["train_seconds_all_sessions"] >= r["seconds_to_best_epoch"] > 0
        )
        assert r["best_valid"]["valid/ndcg@20"] > 0
    # both protocols are those of eval.evaluate_model on the run's best weights
    import eval_protocols

    from recsys.pipeline import run_dir_for

    cfg = sequential_paper.build_config("tiny", "sasrec", 3, ["train.num_threads=1", "train.progress=false"])
    direct = eval_protocols.main(["--config", str(tiny_repo / "configs" / "tiny_sasrec.yaml"),
                                  "--weights", str(run_dir_for(cfg) / "best_model.pt")])  # fmt: skip
    assert sas["test"] == pytest.approx(direct["ours"], abs=1e-12)
    assert sas["test_reference_protocol"] == pytest.approx(
        direct["history scored 0 + 2 zero-score non-items"], abs=1e-12
    )
    capsys.readouterr()

    # a second call skips finished runs (no training) and the table shows both protocols
    monkeypatch.setattr(
        sequential_paper, "train_one", lambda *a: pytest.fail("a finished run was trained again")
    )
    sequential_paper.main(["--runs", "tiny:sasrec", "--seeds", "3", "--out", str(out)])
    assert "done already, skipped" in capsys.readouterr().out
    sequential_paper.main(["--table", "--out", str(out)])
    rows = capsys.readouterr().out.splitlines()
    assert sum("| ours |" in r for r in rows) == 2 and sum("| reference |" in r for r in rows) == 2
    # other --set overrides make another run: not skipped
    trained = []
    shorter = dict(sas, overrides=["train.epochs=2", *sas["overrides"]])
    monkeypatch.setattr(sequential_paper, "train_one", lambda *a: trained.append(a) or shorter)
    sequential_paper.main(
        ["--runs", "tiny:sasrec", "--seeds", "3", "--set", "train.epochs=2", "--out", str(out)]
    )
    assert len(trained) == 1 and len(json.loads(out.read_text())) == 3
    # ... and its own row in the table: not a second seed of the first setting
    rows = capsys.readouterr().out.splitlines()
    assert any("| tiny | sasrec [train.epochs=2] | 1 | ours |" in r for r in rows)
    assert any("| tiny | sasrec | 1 | ours |" in r for r in rows)
    with pytest.raises(SystemExit):
        sequential_paper.main(["--runs", "tiny:sasrec", "--set", "seed=5", "--out", str(out)])
    assert "give seeds with --seeds" in capsys.readouterr().err


def test_bad_run_names_are_refused():
    with pytest.raises(SystemExit, match="DATASET:VARIANT"):
        sequential_paper.parse_run("beauty-sasrec")
    with pytest.raises(SystemExit, match="VARIANT"):
        sequential_paper.parse_run("beauty:caser")


def test_the_first_readme_variant_is_the_reference_command_up_to_the_loss_scale():
    """``--rec_weight 0.1 --lambda_0 0.1 --beta_0 0.1 --intent_num 512``: equal weights, 512 intents, its own run."""
    cfg = sequential_paper.build_config("sports", "icsrec_readme", 1, [])
    model = cfg.model_config_obj()
    assert (model.coarse_weight, model.fine_weight, model.intents) == (1.0, 1.0, 512)
    assert cfg.name == "sports-icsrec-icsrec_readme"
    plain = sequential_paper.build_config("sports", "icsrec", 1, [])
    assert cfg.fingerprint() != plain.fingerprint()
    assert plain.model_config_obj().coarse_weight == 0.3


def test_table_gives_mean_and_sample_std_over_seeds_per_protocol():
    def run(seed, hit5, epoch, seconds):
        ours = {"hit@5": hit5, "ndcg@5": 0.03, "hit@20": 0.1, "ndcg@20": 0.05}
        reference = {**ours, "hit@5": hit5 - 0.01}
        return {"dataset": "beauty", "variant": "sasrec", "seed": seed, "test": ours,
                "test_reference_protocol": reference, "best_epoch": epoch, "seconds_per_epoch": seconds}  # fmt: skip

    results = {"a": run(1, 0.045, 50, 40.0), "b": run(2, 0.055, 70, 60.0)}
    # the same seed again under another config (a YAML edited since) is its own row, never a third seed
    again = sequential_paper.table({**results, "c": dict(run(2, 0.05, 60, 50.0), fingerprint="abc")})
    assert "| beauty | sasrec [config abc] | 1 | ours | 0.0500 |" in again
    assert "| beauty | sasrec | 2 | ours |" in again
    rows = sequential_paper.table(results).splitlines()
    ours = next(r for r in rows if "| ours |" in r)
    reference = next(r for r in rows if "| reference |" in r)
    # two seeds; hit@5 0.045 and 0.055: mean 0.05, sample std 0.005 * sqrt(2) = 0.0071; equal values: std 0
    assert ours.startswith("| beauty | sasrec | 2 | ours | 0.0500 ± 0.0071 | 0.0300 ± 0.0000 |")
    assert reference.startswith("| beauty | sasrec | 2 | reference | 0.0400 ± 0.0071 |")
    assert ours.endswith("| 60 | 50 |")  # mean best epoch, mean seconds per epoch
    paper = next(r for r in rows if "| paper |" in r)
    assert "0.0377 | 0.0241 | 0.0894 | 0.0386" in paper
    # one seed: the bare value, no spread
    one = sequential_paper.table({"a": run(1, 0.045, 50, 40.0)})
    assert "| 1 | ours | 0.0450 | 0.0300 |" in one and "±" not in one
    # unfinished runs (--interim records) are marked, with the epoch each stands at
    unfinished = {k: {**r, "status": "interim: still training", "epochs_run": n}
                  for (k, r), n in zip(results.items(), (62, 79), strict=True)}  # fmt: skip
    assert "| 2 (interim at epochs 62, 79) | ours |" in sequential_paper.table(unfinished)
    assert "interim" not in sequential_paper.table(results)


def test_eval_protocols_tests_saved_weights_under_both_protocols(tiny_repo, capsys):
    import eval_protocols

    from recsys.config import load_config
    from recsys.pipeline import run_dir_for, train_experiment

    cfg_path = tiny_repo / "configs" / "tiny_sasrec.yaml"
    cfg = load_config(cfg_path, [])
    res = train_experiment(cfg, echo=lambda *_: None)
    out = eval_protocols.main(
        ["--config", str(cfg_path), "--weights", str(run_dir_for(cfg) / "best_model.pt")]
    )
    assert out["ours"] == pytest.approx(res.test_metrics, abs=1e-12)  # the run's own test of its best weights
    from eval import evaluate_model

    for name, kwargs in eval_protocols.PROTOCOLS.items():
        expected = evaluate_model(res.model, res.dataset, "test", ks=cfg.eval.ks, **kwargs)
        assert out[name] == pytest.approx(expected, abs=1e-12), name
    assert set(eval_protocols.PROTOCOLS) == {
        "ours",
        "history scored 0",
        "history scored 0 + 2 zero-score non-items",
    }
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{") :])["ours"]["hit@20"] == out["ours"]["hit@20"]


def test_save_result_merges_with_runs_saved_by_another_driver(tmp_path):
    out = tmp_path / "res" / "r.json"
    mine = sequential_paper.save_result(out, "a", {"v": 1})
    # another driver saves "b" after this one loaded its results: both survive
    sequential_paper.save_result(out, "b", {"v": 2})
    merged = sequential_paper.save_result(out, "c", {"v": 3})
    assert mine == {"a": {"v": 1}}
    assert merged == json.loads(out.read_text()) == {"a": {"v": 1}, "b": {"v": 2}, "c": {"v": 3}}
    assert not list(out.parent.glob("*.tmp"))


def test_a_run_claimed_by_another_driver_is_skipped(tiny_repo, capsys, monkeypatch, tmp_path):
    out = tiny_repo / "res.json"
    extra = ["train.num_threads=1", "train.progress=false"]
    cfg = sequential_paper.build_config("tiny", "sasrec", 3, extra)
    monkeypatch.setattr(
        sequential_paper, "train_one", lambda *a: pytest.fail("a claimed run was trained by a second driver")
    )
    with sequential_paper.claim_run(cfg) as first:
        assert first
        with sequential_paper.claim_run(cfg) as second:
            assert not second
        sequential_paper.main(["--runs", "tiny:sasrec", "--seeds", "3", "--out", str(out)])
    assert "being trained by another driver, skipped" in capsys.readouterr().out
    assert not out.exists()
    # released when the holder is done: the run can be claimed again
    with sequential_paper.claim_run(cfg) as again:
        assert again


def test_interim_tests_the_best_weights_of_an_unfinished_run_without_recording_it(
    tiny_repo, capsys, monkeypatch
):
    import eval_protocols

    from recsys.pipeline import run_dir_for, train_experiment
    from recsys.trainer import Trainer

    out = tiny_repo / "res.json"
    extra = ["train.num_threads=1", "train.progress=false"]
    cfg = sequential_paper.build_config("tiny", "sasrec", 3, extra)
    with monkeypatch.context() as m:  # a session that ended after 2 of the run's 3 epochs
        m.setattr(Trainer, "_done", lambda self: self.state.epoch >= 2)
        train_experiment(cfg, resume=True, echo=lambda *_: None)
    capsys.readouterr()
    monkeypatch.setattr(sequential_paper, "train_one", lambda *a: pytest.fail("--interim trained a run"))
    sequential_paper.main(
        ["--interim", "--runs", "tiny:sasrec", "tiny:coarse_only", "--seeds", "3", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert "tiny:coarse_only:s3" in printed and "no best weights yet" in printed
    assert not out.exists()  # never mixed with finished runs
    interim = json.loads((tiny_repo / "res_interim.json").read_text())
    ((key, record),) = interim.items()
    assert key == sequential_paper.run_key("tiny", "sasrec", 3, cfg)
    assert record["status"].startswith("interim") and "after epoch 2" in record["status"]
    assert record["epochs_run"] == 2 and 1 <= record["best_epoch"] <= 2
    direct = eval_protocols.main(
        ["--config", str(tiny_repo / "configs" / "tiny_sasrec.yaml"),
         "--weights", str(run_dir_for(cfg) / "best_model.pt")]
    )  # fmt: skip
    assert record["test"] == pytest.approx(direct["ours"], abs=1e-12)
    assert record["test_reference_protocol"] == pytest.approx(
        direct["history scored 0 + 2 zero-score non-items"], abs=1e-12
    )

    # a record that got further (a lost run, now started over) is not replaced by an earlier one
    further = {
        key: {**record, "epochs_run": 9, "status": "interim: still training or cut short after epoch 9"}
    }
    (tiny_repo / "res_interim.json").write_text(json.dumps(further))
    sequential_paper.main(["--interim", "--runs", "tiny:sasrec", "--seeds", "3", "--out", str(out)])
    assert (
        "kept the record after epoch 9 (a run that got further); this run, started over, stands at epoch 2"
        in capsys.readouterr().out
    )
    assert json.loads((tiny_repo / "res_interim.json").read_text()) == further

    # a later call naming other runs keeps this record; a run that has finished since loses its interim one
    finished = sequential_paper.run_key(
        "tiny", "fine_only", 3, sequential_paper.build_config("tiny", "fine_only", 3, extra)
    )
    interim[finished] = dict(record)
    (tiny_repo / "res_interim.json").write_text(json.dumps(interim))
    out.write_text(json.dumps({finished: record}))
    sequential_paper.main(["--interim", "--runs", "tiny:coarse_only", "--seeds", "3", "--out", str(out)])
    assert json.loads((tiny_repo / "res_interim.json").read_text()) == {key: record}
    # the final record, when its run finishes, takes the interim one's place at once
    sequential_paper.save_result(out, key, dict(record, status="finished"))
    assert json.loads((tiny_repo / "res_interim.json").read_text()) == {}


def test_curves_show_the_validation_metric_of_finished_and_unfinished_runs(tiny_repo, capsys, monkeypatch):
    import torch

    from recsys.pipeline import run_dir_for, train_experiment
    from recsys.trainer import CHECKPOINT, Trainer

    extra = ["train.num_threads=1", "train.progress=false"]
    cfg = sequential_paper.build_config("tiny", "sasrec", 3, extra)
    with monkeypatch.context() as m:  # a run cut short after 2 of its 3 epochs
        m.setattr(Trainer, "_done", lambda self: self.state.epoch >= 2)
        train_experiment(cfg, resume=True, echo=lambda *_: None)
    history = torch.load(run_dir_for(cfg) / CHECKPOINT, weights_only=False)["state"]["history"]
    capsys.readouterr()
    monkeypatch.setattr(sequential_paper, "train_one", lambda *a: pytest.fail("--curves trained a run"))
    # --curves reads only checkpoints: it needs no --out, and no results file appears
    sequential_paper.main(
        ["--curves", "1", "2", "3", "--runs", "tiny:sasrec", "tiny:coarse_only", "--seeds", "3"]
    )
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "| epoch | tiny:sasrec:s3 |"  # the coarse-only run has no checkpoint: left out
    valid = [h["valid/ndcg@20"] for h in history]
    assert rows[2:5] == [f"| 1 | {valid[0]:.4f} |", f"| 2 | {valid[1]:.4f} |", "| 3 |  |"]
    best = 1 if valid[0] >= valid[1] else 2
    assert rows[5] == f"| best (epoch) | {max(valid):.4f} ({best}) |"
    assert rows[6] == "| epochs run | 2 |"
    assert not list(tiny_repo.glob("*.json"))  # no results file written
    with pytest.raises(SystemExit):  # every other mode still needs the results file
        sequential_paper.main(["--table"])
    assert "--out is required" in capsys.readouterr().err


def test_a_run_folder_in_use_by_a_cli_training_is_skipped(tiny_repo, capsys, tmp_path):
    """`recsys train` of the same config trains the same folder: the driver skips the run and goes on."""
    from recsys.pipeline import run_dir_for, run_folder_lock

    out = tiny_repo / "res.json"
    extra = ["train.num_threads=1", "train.progress=false"]
    cfg = sequential_paper.build_config("tiny", "sasrec", 3, extra)
    with run_folder_lock(run_dir_for(cfg)):
        sequential_paper.main(["--runs", "tiny:sasrec", "--seeds", "3", "--out", str(out)])
    assert "its run folder is in use by another training, skipped" in capsys.readouterr().out
    assert not out.exists()


def test_the_bert4rec_variant_runs_its_config_under_its_own_name():
    cfg = sequential_paper.build_config("beauty", "bert4rec", 1, [])
    assert cfg.name == "beauty-bert4rec" and cfg.model_config_obj().mask_ratio == 0.6
    assert sequential_paper.PAPER[("sports", "bert4rec")] == (0.0217, 0.0143, 0.0604, 0.0251)

"""ICSRec (and ICLRec) through the command line: a run trained and tracked in MLflow, evaluated by ``recsys
evaluate --run``, indexed and served for a known user and for an item-id sequence, and its intents shown by
``recsys explain``."""

from __future__ import annotations

import json

import pytest
import yaml

from recsys.cli import main
from tests.test_models_icsrec import icsrec_cfg
from tests.test_models_sasrec import write_cyclic_sequences

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_icsrec_run_is_tracked_evaluated_served_and_explained(tmp_path, capsys, monkeypatch):
    raw = icsrec_cfg(write_cyclic_sequences(tmp_path / "d", n_users=60), epochs=3)
    raw["tracking"] = {"experiment": "cli-icsrec"}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    import mlflow

    run = mlflow.get_run(run_id)
    assert run.data.params["model.name"] == "icsrec" and run.data.params["model.coarse_weight"] == "0.3"
    assert {"train/ce", "train/coarse", "train/fine", "valid/ndcg_at_5"} <= set(run.data.metrics)

    assert main(["evaluate", "--run", run_id, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["hit@5"] == pytest.approx(run.data.metrics["test_final/hit_at_5"], abs=1e-12)
    # the reference code's protocol: the flags reach evaluate_model
    assert (
        main(["evaluate", "--run", run_id, "--json", "--excluded-score", "0", "--zero-score-items", "2"]) == 0
    )
    reference = json.loads(capsys.readouterr().out)
    from eval import evaluate_model
    from recsys.pipeline import load_run

    loaded = load_run(run_id)
    expected = evaluate_model(loaded.model, loaded.dataset, ks=loaded.config.eval.ks, excluded_score=0.0,
                              zero_score_items=2)  # fmt: skip
    assert reference == pytest.approx(expected, abs=1e-12)
    assert all(reference[key] <= metrics[key] for key in metrics if key.startswith(("hit@", "ndcg@")))
    recs, truth = tmp_path / "r.csv", tmp_path / "t.csv"
    recs.write_text("user,item,score\n1,2,0.5\n")
    truth.write_text("user,item\n1,2\n")
    assert main(["evaluate", "--recs", str(recs), "--truth", str(truth), "--excluded-score", "0"]) == 2
    assert "apply to --run only" in capsys.readouterr().err

    out_dir = tmp_path / "idx"
    assert main(["index", "--run", run_id, "--out", str(out_dir)]) == 0
    capsys.readouterr()
    assert main(["recommend", "--run", run_id, "--user", "3", "--k", "5", "--index", str(out_dir)]) == 0
    user_recs = [
        ln.split("(item ")[1].split(",")[0] for ln in capsys.readouterr().out.splitlines() if "(item " in ln
    ]
    assert len(user_recs) == 5

    # the same index answers an item-id sequence through the model's query side; the user's own history as
    # a sequence gives the user's recommendations
    from recsys.pipeline import load_run, sequence_query_encoder
    from serving import Retriever

    loaded = load_run(run_id)
    retriever = Retriever.load(out_dir)
    assert retriever.index.manifest["metadata"]["sequence_queries"] is True
    ds = loaded.dataset
    item_ids = [str(i) for i in ds.item_vocab.sort("item_idx")["item_id"].to_list()]
    user_idx = ds.user_vocab["user_id"].to_list().index("3")
    history = [item_ids[i] for i in loaded.model.histories["all"][user_idx].tolist()]
    by_sequence = retriever.recommend_for_sequences([history], sequence_query_encoder(loaded.model), k=5)[0]
    assert [r.item_id for r in by_sequence] == user_recs
    capsys.readouterr()
    args = ["recommend", "--run", run_id, "--index", str(out_dir), "--k", "5"]
    assert main([*args, "--sequence", *history]) == 0
    cli_seq = [
        ln.split("(item ")[1].split(",")[0] for ln in capsys.readouterr().out.splitlines() if "(item " in ln
    ]
    assert cli_seq == user_recs
    assert main([*args, "--json", "--sequence", *history]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)] == user_recs
    assert main([*args, "--sequence", "no-such-item"]) == 2
    assert "no-such-item" in capsys.readouterr().err
    assert main([*args, "--user", "no-such-user"]) == 2
    assert "give their items with --sequence" in capsys.readouterr().err
    assert main(args) == 2  # neither --user nor --sequence

    assert main(["explain", "--run", run_id, "--sequence", *history[-3:], "--k", "4", "--json"]) == 0
    exp = json.loads(capsys.readouterr().out)
    assert [x["item_id"] for x in exp["items"]] == history[-3:]
    assert len(exp["intents"]) == 3 and len(exp["recommendations"]) == 4
    assert exp["intents"][0]["typical_subsequences"]
    assert main(["explain", "--run", run_id, "--user", "3"]) == 0
    assert "intent" in capsys.readouterr().out
    # --intents and --items size a sequence's view too
    assert (
        main(["explain", "--run", run_id, "--sequence", *history, "--intents", "2", "--items", "3", "--json"])
        == 0
    )
    exp = json.loads(capsys.readouterr().out)
    assert len(exp["intents"]) == 2 and all(len(v["top_items"]) == 3 for v in exp["intents"])
    assert [x["item_id"] for x in exp["items"]] == history
    # a user's explanation recommends what the served index recommends, leaving out every known item: an
    # item known only to the dataset's known pairs (rated below a threshold) is left out too
    assert main(["explain", "--run", run_id, "--user", "3", "--k", "5", "--json"]) == 0
    exp = json.loads(capsys.readouterr().out)
    assert [r["item_id"] for r in exp["recommendations"]] == user_recs
    assert [x["item_id"] for x in exp["items"]] == history  # the user's every known item, oldest first
    import scipy.sparse as sp

    from features import PreparedDataset

    real = PreparedDataset.known_matrix

    def with_first_recommendation_known(self):
        extra = sp.csr_matrix(
            ([1.0], ([user_idx], [item_ids.index(user_recs[0])])), shape=(self.n_users, self.n_items)
        )
        return sp.csr_matrix(real(self) + extra)

    monkeypatch.setattr(PreparedDataset, "known_matrix", with_first_recommendation_known)
    assert main(["explain", "--run", run_id, "--user", "3", "--k", "5", "--json"]) == 0
    got = [r["item_id"] for r in json.loads(capsys.readouterr().out)["recommendations"]]
    assert user_recs[0] not in got and got[:4] == user_recs[1:]
    monkeypatch.setattr(PreparedDataset, "known_matrix", real)
    assert main(["explain", "--run", run_id, "--sequence", "no-such-item"]) == 2
    assert "no-such-item" in capsys.readouterr().err
    assert main(["explain", "--run", run_id]) == 2  # neither: refused as such, not as the user "None"
    assert "give either --user USER or --sequence" in capsys.readouterr().err
    # both: --user was ignored before, even an unknown one
    assert main(["explain", "--run", run_id, "--user", "nosuchuser", "--sequence", *history[-3:]]) == 2
    assert "give either --user USER or --sequence" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags", [["--excluded-score", "nan"], ["--excluded-score", "x"], ["--zero-score-items", "-1"]]
)
def test_reference_protocol_flags_are_checked_before_loading(flags, capsys):
    with pytest.raises(SystemExit) as err:
        main(["evaluate", "--run", "no-such-run", *flags])
    assert err.value.code == 2
    assert "expected a" in capsys.readouterr().err


def test_iclrec_run_is_evaluated_served_and_explained(tmp_path, capsys):
    """ICLRec through the same commands: its intents are shown by `recsys explain`, whose recommendations for
    a user are the served ones (the last-position query, not the mean representation intents are assigned
    by)."""
    from tests.test_models_sasrec import sasrec_cfg

    raw = sasrec_cfg(write_cyclic_sequences(tmp_path / "d", n_users=60), "iclrec", epochs=2, batch_size=16)
    raw["tracking"] = {"experiment": "cli-iclrec"}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    import mlflow

    run = mlflow.get_run(run_id)
    assert {"train/bce", "train/instance", "train/intent"} <= set(run.data.metrics)
    assert main(["evaluate", "--run", run_id, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["hit@5"] == pytest.approx(run.data.metrics["test_final/hit_at_5"], abs=1e-12)

    out_dir = tmp_path / "idx"
    assert main(["index", "--run", run_id, "--out", str(out_dir)]) == 0
    capsys.readouterr()
    assert (
        main(["recommend", "--run", run_id, "--user", "3", "--k", "5", "--index", str(out_dir), "--json"])
        == 0
    )
    served = [r["item_id"] for r in json.loads(capsys.readouterr().out)]
    assert main(["explain", "--run", run_id, "--user", "3", "--k", "5", "--json"]) == 0
    exp = json.loads(capsys.readouterr().out)
    assert [r["item_id"] for r in exp["recommendations"]] == served
    assert exp["intents"] and exp["intents"][0]["typical_subsequences"]
    assert main(["explain", "--run", run_id, "--sequence", *exp["items"][0]["item_id"].split()]) == 0
    assert "intent" in capsys.readouterr().out

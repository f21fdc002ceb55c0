"""The one trainer: budgets, early stopping, atomic checkpoints, exact resume, MLflow logging."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.config import validate_config
from recsys.trainer import CHECKPOINT, Trainer, atomic_torch_save


def write_synthetic_interactions(path: Path, n_users: int = 120, n_items: int = 80, seed: int = 0) -> Path:
    """Users in 4 taste groups, each preferring a quarter of the catalogue, with timestamps."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = u % 4
        liked = np.arange(group * n_items // 4, (group + 1) * n_items // 4)
        items = (
            rng.choice(liked, size=12, replace=False).tolist()
            + rng.choice(n_items, size=3, replace=False).tolist()
        )
        for t, i in enumerate(dict.fromkeys(items)):
            rows.append(f"u{u},i{i},{t}")
    path.write_text("user,item,ts\n" + "\n".join(rows) + "\n")
    return path


def make_cfg(csv: Path, **train) -> dict:
    return {
        "name": "synthetic",
        "seed": 7,
        "device": "cpu",
        "data": {
            "source": "interactions",
            "path": str(csv),
            "columns": {"user": "user", "item": "item", "timestamp": "ts"},
            "split": {"protocol": "random_ratio", "test_ratio": 0.2, "valid_ratio": 0.1, "seed": 1},
        },
        "model": {"name": "mf_bpr", "dim": 16, "reg": 1e-4},
        "train": {"epochs": 6, "batch_size": 64, "lr": 0.01, "progress": False, **train},
        "eval": {"ks": [5, 10]},
        "tracking": {"enabled": False},
    }


def build(cfg_raw: dict, run_dir: Path):
    from features import prepare
    from recsys.models import build_model
    from recsys.pipeline import prepare_model

    cfg = validate_config(cfg_raw)
    ds = prepare(cfg.data)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, ds.n_users, ds.n_items)
    prepare_model(model, ds)  # prepare(train matrix), and prepare_dataset(ds) for models that define it
    return Trainer(model, ds, cfg, run_dir)


def crash_and_resume(cfg_raw: dict, tmp_path: Path):
    """Train ``cfg_raw`` straight through, and again with a crash in epoch 1 followed by a resume; returns the
    two finished trainers ``(straight, resumed)`` for the caller to compare (models that bring their own
    sampler or epoch hooks use this to check that resume stays exact)."""
    straight = build(cfg_raw, tmp_path / "straight")
    straight.fit()
    crashing = build(cfg_raw, tmp_path / "crashed")
    crashing.hooks.append(CrashAt(epoch=1))
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    resumed = build(cfg_raw, tmp_path / "crashed")
    resumed.fit(resume=True)
    return straight, resumed


class CrashAt:
    """A hook that kills training in the middle of an epoch, as a crash would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            # Take a few optimiser steps of this epoch first, so the crash really is mid-epoch.
            sampler = trainer._sampler(epoch)
            for _, batch in zip(range(2), sampler, strict=False):
                total, _ = trainer.model.loss(batch)
                trainer.optimizer.zero_grad()
                total.backward()
                trainer.optimizer.step()
            raise KeyboardInterrupt("simulated crash")


def test_resume_after_crash_is_exact(tmp_path):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    straight = build(make_cfg(csv), tmp_path / "a")
    straight.fit()
    ref_metrics = straight.evaluate("test")
    ref_weights = {k: v.clone() for k, v in straight.model.state_dict().items()}

    crashing = build(make_cfg(csv), tmp_path / "b")
    crashing.hooks.append(CrashAt(epoch=3))
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    assert (tmp_path / "b" / CHECKPOINT).exists()
    assert crashing.state.epoch == 3  # three epochs completed and checkpointed before the crash

    resumed = build(make_cfg(csv), tmp_path / "b")  # a fresh process would rebuild everything like this
    resumed.fit(resume=True)
    assert resumed.state.epoch == straight.state.epoch
    assert resumed.state.step == straight.state.step
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, ref_weights[k]), k
    assert resumed.evaluate("test") == ref_metrics
    assert [h["train/loss"] for h in resumed.state.history] == [
        h["train/loss"] for h in straight.state.history
    ]


def test_lr_factor_warms_up_then_decays_linearly():
    from recsys.trainer import lr_factor

    assert [lr_factor(s, 10, 0, "constant") for s in (1, 10)] == [1.0, 1.0]
    assert [lr_factor(s, 10, 4, "constant") for s in (1, 2, 4, 5, 10)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert [lr_factor(s, 10, 0, "linear") for s in (1, 2, 10)] == [1.0, 0.9, pytest.approx(0.1)]
    assert [lr_factor(s, 10, 4, "linear") for s in (2, 4, 5, 6, 10)] == pytest.approx(
        [0.5, 1.0, 1.0, 5 / 6, 1 / 6]
    )
    assert (
        lr_factor(12, 10, 0, "linear") == 0.0
    )  # past the budget (a longer epoch than the first): no step back


def test_a_scheduled_run_follows_its_schedule_and_resumes_exactly(tmp_path):
    """AdamW with a warm-up and linear decay: each epoch's logged rate is the schedule's at its last step (the
    budget is epochs x steps per epoch), and a run cut mid-epoch and resumed ends with the same weights."""
    from recsys.trainer import lr_factor

    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = make_cfg(csv, optimizer="adamw", weight_decay=0.1, lr_schedule="linear", warmup_steps=5)
    straight, resumed = crash_and_resume(raw, tmp_path)
    per_epoch = int(straight.state.step / straight.state.epoch)
    budget = 6 * per_epoch
    assert [h["lr"] for h in straight.state.history] == pytest.approx(
        [0.01 * lr_factor(e * per_epoch, budget, 5, "linear") for e in range(1, 7)]
    )
    assert straight.state.history[-1]["lr"] == pytest.approx(0.01 / (budget - 5))
    assert isinstance(straight.optimizer, torch.optim.AdamW)
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, straight.model.state_dict()[k]), k
    assert [h["lr"] for h in resumed.state.history] == [h["lr"] for h in straight.state.history]


def test_adamw_decays_the_weights_apart_from_the_gradient(tmp_path):
    """The same weight decay, coupled (Adam: part of the gradient, then rescaled by Adam's second moment) and
    decoupled (AdamW: the weights shrink by lr * decay each step), trains different weights; without decay
    the two are one optimiser."""
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    weights = {}
    for name, train in {
        "adam": {"weight_decay": 0.1},
        "adamw": {"weight_decay": 0.1, "optimizer": "adamw"},
        "adamw0": {"optimizer": "adamw"},
        "adam0": {},
    }.items():
        trainer = build(make_cfg(csv, epochs=2, **train), tmp_path / name)
        trainer.fit()
        weights[name] = trainer.model.state_dict()["user_emb.weight"]
    assert not torch.allclose(weights["adam"], weights["adamw"], atol=1e-3)
    torch.testing.assert_close(weights["adamw0"], weights["adam0"])


def test_decay_scope_matrices_spares_the_vectors(tmp_path):
    """``decay_scope: matrices``: AdamW decays the embedding tables, not the vectors (a bias-like vector is
    added to MF-BPR here): after steps whose gradients are zero, a decayed matrix has shrunk by
    (1 - lr * decay) per step while a spared vector kept its values."""
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    trainer = build(
        make_cfg(csv, optimizer="adamw", weight_decay=0.5, decay_scope="matrices"), tmp_path / "a"
    )
    trainer.model.register_parameter("spare", torch.nn.Parameter(torch.ones(3)))
    optimizer = trainer._make_optimizer()
    groups = optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() < 2 for p in groups[1]["params"])
    table = trainer.model.user_emb.weight
    before = table.detach().clone()
    for p in trainer.model.parameters():
        p.grad = torch.zeros_like(p)
    for _ in range(3):
        optimizer.step()
    torch.testing.assert_close(table.detach(), before * (1 - 0.01 * 0.5) ** 3)
    assert torch.equal(trainer.model.spare.detach(), torch.ones(3))
    everything = build(make_cfg(csv, optimizer="adamw", weight_decay=0.5), tmp_path / "b")._make_optimizer()
    assert len(everything.param_groups) == 1


def test_gradient_clipping_bounds_the_step_and_logs_the_norm(tmp_path, monkeypatch):
    """``max_grad_norm``: every step's gradients reach the optimiser with a global norm of at most the bound
    (the losses here give larger ones), the epoch's mean norm before clipping is logged as ``grad_norm``, and a
    run cut mid-epoch and resumed ends with the same weights."""
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = make_cfg(csv, epochs=3, max_grad_norm=1e-3)
    seen: list[float] = []
    real_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        )
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    trainer = build(raw, tmp_path / "clipped")
    trainer.fit()
    assert seen and max(seen) <= 1e-3 * (1 + 1e-5)
    norms = [h["grad_norm"] for h in trainer.state.history]
    assert len(norms) == 3 and min(norms) > 1e-3  # the bound did bind: the norms before clipping exceed it
    assert "train/grad_norm" not in trainer.state.history[0]  # not a loss part
    monkeypatch.undo()
    straight, resumed = crash_and_resume(raw, tmp_path / "resume")
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, straight.model.state_dict()[k]), k
    assert "grad_norm" not in build(make_cfg(csv, epochs=1), tmp_path / "plain").fit().history[0]


RESUME_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {repo!r})
    from tests.test_trainer import build, make_cfg
    from pathlib import Path

    class SlowDown:
        def on_epoch_end(self, trainer, epoch, record):
            if epoch == 2:
                Path({flag!r}).write_text("x")
                time.sleep(60)  # the test kills the process here: epoch 3 trained, not yet checkpointed
    t = build(make_cfg(Path({csv!r})), Path({run!r}))
    t.hooks.append(SlowDown())
    t.fit(resume=True)
    print(json.dumps(t.evaluate("test")))
    """
)


def test_resume_after_sigkill_in_a_real_process(tmp_path):
    """A training process killed with SIGKILL mid-run, then resumed in a new process, ends with the same metrics
    as an uninterrupted run."""
    repo = str(Path(__file__).resolve().parents[1])
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    flag = tmp_path / "reached"
    script = tmp_path / "job.py"
    script.write_text(
        RESUME_SCRIPT.format(repo=repo, csv=str(csv), run=str(tmp_path / "run"), flag=str(flag))
    )
    env = {**os.environ, "PYTHONPATH": repo}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    for _ in range(600):
        if flag.exists() or proc.poll() is not None:
            break
        import time

        time.sleep(0.1)
    assert flag.exists(), "the job never reached epoch 3"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Resume in a new process, without the slow-down hook.
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    assert ckpt["state"]["epoch"] == 2 and not ckpt["state"]["finished"]
    code = (
        f"import sys, json; sys.path.insert(0, {repo!r}); from pathlib import Path; "
        f"from tests.test_trainer import build, make_cfg; "
        f"t = build(make_cfg(Path({str(csv)!r})), Path({str(tmp_path / 'run')!r})); t.fit(resume=True); "
        f"print(json.dumps(t.evaluate('test')))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    resumed = out.stdout.strip().splitlines()[-1]

    straight = build(make_cfg(csv), tmp_path / "straight")
    straight.fit()
    import json

    assert json.loads(resumed) == straight.evaluate("test")


def test_early_stopping_and_best_weights(tmp_path):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = make_cfg(csv, epochs=40, lr=0.2, early_stopping={"metric": "ndcg@10", "patience": 2})
    t = build(raw, tmp_path / "r")
    state = t.fit()
    assert state.stopped_early and state.epoch < 40
    assert state.best_epoch == state.epoch - 2  # patience evaluations without improvement after the best
    # The model holds the best validation weights at the end, not the last ones.
    assert t.evaluate("valid")["ndcg@10"] == pytest.approx(state.best_metric)


def _scripted_validation(trainer: Trainer, values: list[float]) -> None:
    """Validation answers ``values[epoch - 1]`` as ndcg@10 (the test split is evaluated for real)."""
    real = trainer.evaluate

    def evaluate(split):
        return {"ndcg@10": values[trainer.state.epoch - 1]} if split == "valid" else real(split)

    trainer.evaluate = evaluate


@pytest.mark.parametrize(
    "values, patience, stops_after, best_epoch",
    [
        # a plateau is no improvement: the first epoch to reach the best keeps it, and patience runs out
        ([0.1, 0.2, 0.2, 0.2, 0.2, 0.2], 2, 4, 2),
        # patience counts evaluations since the last improvement, not all the evaluations that did not improve
        ([0.3, 0.2, 0.4, 0.35, 0.5, 0.45, 0.44, 0.43], 2, 7, 5),
    ],
)
def test_early_stopping_on_a_scripted_validation(tmp_path, values, patience, stops_after, best_epoch):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = make_cfg(csv, epochs=len(values), early_stopping={"metric": "ndcg@10", "patience": patience})
    t = build(raw, tmp_path / "r")
    _scripted_validation(t, values)
    state = t.fit()
    assert (state.stopped_early, state.epoch, state.best_epoch) == (True, stops_after, best_epoch)
    assert state.best_metric == values[best_epoch - 1]


def test_eval_every_validates_every_nth_epoch_and_the_last(tmp_path):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    t = build(make_cfg(csv, epochs=5, eval_every=2), tmp_path / "r")
    _scripted_validation(t, [0.5, 0.1, 0.5, 0.2, 0.3])
    state = t.fit()
    assert [h["epoch"] for h in state.history if "valid/ndcg@10" in h] == [2.0, 4.0, 5.0]
    assert (state.best_epoch, state.best_metric) == (5, 0.3)  # epochs 1 and 3 were never validated


def test_each_epoch_draws_its_own_order(tmp_path):
    """The sampler's order is a function of (seed, epoch): the same pair replays it (exact resume), and
    another epoch or seed draws another (the same shuffle every epoch would train worse, unnoticed)."""
    from recsys.trainer import epoch_generator

    def order(seed, epoch):
        return torch.randperm(1000, generator=epoch_generator(seed, epoch))

    assert torch.equal(order(7, 3), order(7, 3))
    assert not torch.equal(order(7, 3), order(7, 4))
    assert not torch.equal(order(7, 3), order(8, 3))

    class FirstBatches:  # the batch each epoch starts with, as the trainer's sampler deals it
        def __init__(self):
            self.seen = []

        def on_epoch_start(self, trainer, epoch):
            self.seen.append(next(iter(trainer._sampler(epoch))))

    t = build(make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=2), tmp_path / "r")
    spy = FirstBatches()
    t.hooks.append(spy)
    t.fit()
    first, second = spy.seen  # {"users": ..., "pos": ..., "neg": ...} index tensors
    assert first.keys() == second.keys()
    assert not all(torch.equal(first[k], second[k]) for k in first)


def test_step_budget(tmp_path):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    t = build(make_cfg(csv, epochs=50, max_steps=7), tmp_path / "r")
    state = t.fit()
    assert state.step == 7


def test_users_sampler_steps_per_epoch(tmp_path):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    t = build(make_cfg(csv, epochs=3, sampler="users", steps_per_epoch=5), tmp_path / "r")
    assert t.fit().step == 15
    # default: as many triples as training pairs, the last batch counted (the official LightGCN code's
    # `len(users) // batch + 1` batches); this rounded down, one batch short (395 of Gowalla's 396)
    t = build(make_cfg(csv, epochs=2, sampler="users"), tmp_path / "d")
    pairs = t.dataset.matrix("train").nnz
    assert pairs % 64 and t.fit().step == 2 * math.ceil(pairs / 64)


def test_steps_per_epoch_is_refused_where_it_would_be_ignored(tmp_path):
    from recsys.config import ConfigError

    with pytest.raises(ConfigError, match="steps_per_epoch applies to train.sampler 'users' only"):
        validate_config(make_cfg(tmp_path / "x.csv", steps_per_epoch=3))
    seq = tmp_path / "seq"
    seq.mkdir()
    (seq / "Toy.txt").write_text(
        "".join(f"{u + 1} " + " ".join(str(1 + (u + t) % 9) for t in range(6)) + "\n" for u in range(20))
    )
    raw = make_cfg(tmp_path / "x.csv", sampler="users", steps_per_epoch=3)
    raw["data"] = {"source": "amazon_seq", "path": str(seq), "name": "Toy"}
    raw["model"] = {"name": "sasrec", "dim": 8, "max_len": 5, "ffn_dim": 16}
    with pytest.raises(ValueError, match="SASRec brings its own sampler"):
        build(raw, tmp_path / "r")


def test_learning_actually_happens(tmp_path):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    t = build(make_cfg(csv, epochs=0), tmp_path / "r0")
    t.fit()
    before = t.evaluate("test")["recall@10"]
    t2 = build(make_cfg(csv, epochs=15), tmp_path / "r1")
    t2.fit()
    after = t2.evaluate("test")["recall@10"]
    assert after > before + 0.1, (before, after)


def test_early_stopping_without_validation_is_an_error(tmp_path):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = make_cfg(csv, early_stopping={"metric": "ndcg@10", "patience": 2})
    raw["data"]["split"]["valid_ratio"] = 0.0
    with pytest.raises(ValueError, match="needs a validation split"):
        build(raw, tmp_path / "r")


def test_checkpoint_from_other_config_is_refused(tmp_path):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    t = build(make_cfg(csv, epochs=1), tmp_path / "r")
    t.fit()
    other = build(make_cfg(csv, epochs=1, lr=0.5), tmp_path / "r")
    with pytest.raises(ValueError, match="different config"):
        other.fit(resume=True)


def test_checkpoint_from_other_data_is_refused(tmp_path):
    """Same config, but the interactions file was rewritten: resuming would continue a model trained on the
    old split and test it on the new one, where some test pairs were its training positives."""
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    build(make_cfg(csv, epochs=1), tmp_path / "r").fit()
    write_synthetic_interactions(csv, seed=1)
    changed = build(make_cfg(csv, epochs=1), tmp_path / "r")
    with pytest.raises(ValueError, match="checkpoint was trained on dataset .* source files changed"):
        changed.fit(resume=True)
    again = build(make_cfg(csv, epochs=1), tmp_path / "r2")
    again.fit()
    assert build(make_cfg(csv, epochs=1), tmp_path / "r2").load_checkpoint()  # unchanged data resumes


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_torch_save({"a": 1}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic_torch_save({"a": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_closed_form_models_need_no_optimiser(tmp_path):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = make_cfg(csv, early_stopping={"metric": "ndcg@10", "patience": 2})
    raw["model"] = {"name": "popularity"}
    t = build(raw, tmp_path / "r")
    state = t.fit()
    assert state.finished and state.step == 0 and t.optimizer is None
    assert t.evaluate("test")["recall@10"] > 0


def test_random_states_restored_from_a_checkpoint_on_a_device_go_back_as_cpu_tensors(monkeypatch):
    # a checkpoint loaded with map_location=cuda holds its saved CUDA states on the GPU, and CUDA's generator
    # refuses anything but a CPU byte tensor: every resume of a GPU run failed (no GPU here: a stand-in for
    # a tensor on the device, which only .cpu() turns into the state)
    import random

    from recsys.trainer import restore_rng

    class OnDevice:
        def __init__(self, state: torch.Tensor) -> None:
            self.state = state

        def cpu(self) -> torch.Tensor:
            return self.state

    saved = {
        "torch": OnDevice(torch.get_rng_state()),
        "cuda": [OnDevice(torch.get_rng_state()), OnDevice(torch.get_rng_state())],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    given = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "set_rng_state", lambda state: given.append(state))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: given.extend(states))
    restore_rng(saved)
    assert len(given) == 3 and all(s.device.type == "cpu" and s.dtype == torch.uint8 for s in given)

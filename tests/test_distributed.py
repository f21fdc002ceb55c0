"""Data-parallel training (``torchrun ... recsys train``): each process takes its own batches, DDP averages the
gradients, and process 0 alone validates, checkpoints and reports."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from recsys import distributed
from recsys.distributed import DataParallel, shard_batches
from recsys.trainer import CHECKPOINT, seed_everything
from tests.test_trainer import build, make_cfg, write_synthetic_interactions

REPO = Path(__file__).resolve().parents[1]


def test_each_process_takes_every_nth_batch_and_all_take_as_many():
    shares = [list(shard_batches(iter(range(10)), 10, DataParallel(r, 3))[0]) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # batch 9 would leave one process a step alone
    assert shard_batches(iter(range(10)), 10, DataParallel(0, 3))[1] == 3
    alone, count = shard_batches(range(10), 10, None)
    assert list(alone) == list(range(10)) and count == 10
    with pytest.raises(ValueError, match="an epoch has 2 batch\\(es\\), fewer than the 3 training processes"):
        shard_batches(iter(range(2)), 2, DataParallel(1, 3))


def test_world_size_from_the_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.launched_world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE: expected an integer, got 'two'"):
        distributed.launched_world_size()
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="RANK, MASTER_ADDR, MASTER_PORT not set: start data-parallel"):
        with distributed.process_group(torch.device("cpu")):
            pass


def _torchrun() -> str:
    beside = Path(sys.executable).with_name("torchrun")
    found = str(beside) if beside.exists() else shutil.which("torchrun")
    if found is None:
        pytest.skip("torchrun is not installed beside this Python")
    return found


def _train_in_two_processes(tmp_path: Path, raw: dict) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 recsys train`` of config ``raw``, with ``RECSYS_HOME=tmp_path/home``."""
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "RECSYS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    cmd = [_torchrun(), "--standalone", "--nproc-per-node=2", "-m", "recsys.cli", "train", "-c", "cfg.yaml"]
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as fo, err.open("w") as fe:  # files, not pipes: a hung worker would hold a pipe open
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=fo, stderr=fe, text=True)
        try:
            proc.wait(timeout=180)  # about 8 s on 2 cores
        except subprocess.TimeoutExpired:
            proc.terminate()  # torchrun passes SIGTERM on to its workers, then kills them
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            pytest.fail(
                f"the processes did not finish in 180 s (waiting for each other?):\n{err.read_text()[-3000:]}"
            )
    stdout, stderr = out.read_text(), err.read_text()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("clip", [None, 0.01])
def test_two_processes_train_as_one_with_averaged_gradients(tmp_path, clip):
    """``torchrun --nproc-per-node 2 recsys train``: the final weights equal a single process that steps on
    the mean loss of batches (0, 1), (2, 3), ... of every epoch (what averaging two processes' gradients
    is); the test metrics are printed once. With ``train.max_grad_norm`` the averaged gradient is clipped
    (clipping each process's own gradient before the average would step elsewhere)."""
    extra = {} if clip is None else {"max_grad_norm": clip}
    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=3, **extra)
    out = _train_in_two_processes(tmp_path, raw)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stdout.count("test metrics (synthetic, mf_bpr") == 1
    assert "data-parallel: 2 processes" in out.stdout
    (run_dir,) = (tmp_path / "home" / "runs").glob("synthetic-*")
    trained = torch.load(run_dir / CHECKPOINT, weights_only=False)
    assert trained["state"]["epoch"] == 3

    # the same model and batches in one process, stepping on the mean loss of consecutive pairs
    trainer = build(raw, tmp_path / "reference")
    seed_everything(trainer.cfg.seed)
    trainer._train_csr = trainer.dataset.matrix("train")
    optimizer = trainer._make_optimizer()
    steps = 0
    for epoch in range(3):
        batches = list(trainer._sampler(epoch))
        for first, second in zip(batches[0::2], batches[1::2], strict=False):
            loss = (trainer.model.loss(first)[0] + trainer.model.loss(second)[0]) / 2
            optimizer.zero_grad()
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), clip)
            optimizer.step()
            steps += 1
    assert trained["state"]["step"] == steps
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(trained["model"][name], value, rtol=1e-5, atol=1e-6)
    # and not what one process stepping on every batch gives (the check can fail)
    alone = build(raw, tmp_path / "alone")
    alone.fit()
    assert not torch.allclose(
        alone.model.state_dict()["user_emb.weight"], trained["model"]["user_emb.weight"]
    )


def test_a_failed_setup_stops_every_process_with_the_reason(tmp_path, monkeypatch):
    """Process 0 cannot take the run folder (another training holds it): both processes stop with one
    ``error:`` line naming the reason, before anything trains."""
    from recsys.config import validate_config
    from recsys.pipeline import run_dir_for, run_folder_lock

    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=3)
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))  # where the two processes will look
    run_dir = run_dir_for(validate_config(raw))
    with run_folder_lock(run_dir):
        out = _train_in_two_processes(tmp_path, raw)
    assert out.returncode != 0
    busy = "another training of this config is running"
    assert out.stderr.count(f"error: {run_dir}: {busy}") == 1, out.stderr[-3000:]  # process 0
    assert (
        out.stderr.count(f"error: process 0 stopped before training: RunFolderBusy: {run_dir}: {busy}") == 1
    )
    assert not (run_dir / CHECKPOINT).exists()


def test_early_stopping_stops_every_process(tmp_path):
    """Process 0's validation stops the training; the other process learns it (or it would wait in the next
    step for a partner that never comes, and the run would fail)."""
    raw = make_cfg(
        write_synthetic_interactions(tmp_path / "x.csv"),
        epochs=40,
        lr=0.2,
        early_stopping={"metric": "ndcg@10", "patience": 2},
    )
    out = _train_in_two_processes(tmp_path, raw)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (run_dir,) = (tmp_path / "home" / "runs").glob("synthetic-*")
    state = torch.load(run_dir / CHECKPOINT, weights_only=False)["state"]
    assert state["stopped_early"] and state["epoch"] < 40
    assert f"weights of epoch {state['best_epoch']} of {state['epoch']}" in out.stdout


def test_a_model_with_parameters_no_loss_reaches_trains(tmp_path):
    """The two-tower model's query-side default vectors get no gradient: DDP is told to look for such
    parameters (without it the second step fails on every process)."""
    from tests.test_two_tower import cfg, write_category_data

    raw = cfg(write_category_data(tmp_path / "d", n_users=200))
    raw["train"]["epochs"] = 2
    out = _train_in_two_processes(tmp_path, raw)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stdout.count("test metrics (cat-two-tower, two_tower") == 1


def test_a_checkpoint_resumes_only_with_as_many_processes(tmp_path):
    """A step is one batch per process, so a checkpoint names its process count and a resume with another
    count is refused (here: a one-process checkpoint relabelled as a two-process one)."""
    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=1)
    trainer = build(raw, tmp_path / "run")
    trainer.fit()
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    assert ckpt["processes"] == 1
    ckpt["processes"] = 2
    torch.save(ckpt, tmp_path / "run" / CHECKPOINT)
    with pytest.raises(
        ValueError, match="trained by 2 data-parallel process\\(es\\), this run has 1: resume"
    ):
        build(raw, tmp_path / "run").read_checkpoint()
    del ckpt["processes"]  # written before the key existed: a single-process run
    torch.save(ckpt, tmp_path / "run" / CHECKPOINT)
    assert build(raw, tmp_path / "run").read_checkpoint() is not None


def _dnis_in_one_process(raw: dict, run_dir: Path, epochs: int, both_batches: bool) -> dict:
    """DNIS trained as two processes would, in one: each weight step on the mean loss of training batches
    (2s, 2s+1), each alpha step on the mean alpha gradient of validation batches (2s, 2s+1) of the epoch's
    stream (``both_batches``), or on batch 2s alone (what process 0 would learn by itself)."""
    trainer = build(raw, run_dir)
    model = trainer.model
    seed_everything(trainer.cfg.seed)
    trainer._train_csr = trainer.dataset.matrix("train")
    optimizer = trainer._make_optimizer()
    for epoch in range(epochs):
        model.on_epoch_start(trainer, epoch)
        batches = list(trainer._sampler(epoch))
        for first, second in zip(batches[0::2], batches[1::2], strict=False):
            loss = (model.loss(first)[0] + model.loss(second)[0]) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if model.phase == "search":
                g0, _ = model.alpha_gradient(next(model._valid_batches))
                g1, _ = model.alpha_gradient(next(model._valid_batches))
                model.apply_alpha_gradient((g0 + g1) / 2 if both_batches else g0)
    return model.state_dict()


def test_dnis_searches_alpha_on_every_process_validation_batches(tmp_path):
    """Under ``torchrun --nproc-per-node 2``, an alpha step descends the mean gradient of both processes'
    validation batches (as a weight step does with the training batches), not process 0's batch alone."""
    from tests.test_models_dnis import dnis_cfg

    raw = dnis_cfg(write_synthetic_interactions(tmp_path / "x.csv"), warm_start_epochs=1, search_epochs=2)
    raw["train"].update(epochs=4, early_stopping={"metric": "ndcg@10", "patience": 10})
    out = _train_in_two_processes(tmp_path, raw)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (run_dir,) = (tmp_path / "home" / "runs").glob("synthetic-*")
    trained = torch.load(run_dir / CHECKPOINT, weights_only=False)["model"]

    expected = _dnis_in_one_process(raw, tmp_path / "reference", 4, both_batches=True)
    assert not torch.allclose(expected["alpha"], torch.ones_like(expected["alpha"]))  # alpha did learn
    for name, value in expected.items():
        torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # process 0's validation batches alone would have learned another alpha (the check can fail)
    alone = _dnis_in_one_process(raw, tmp_path / "alone", 4, both_batches=False)
    assert not torch.allclose(alone["alpha"], trained["alpha"], rtol=1e-3, atol=1e-4)


def test_the_streaming_frequency_estimate_counts_every_process_batch(tmp_path):
    """Two-tower ``logq: streaming`` under two processes: a step's sampled items are both processes' batches
    (2s, 2s+1), recorded as one step, the same in both processes; not process 0's batch alone."""
    from recsys.models.two_tower import StreamingFrequency
    from tests.test_two_tower import cfg, write_category_data

    raw = cfg(write_category_data(tmp_path / "d", n_users=200), logq="streaming", streaming_alpha=0.1)
    raw["train"]["epochs"] = 2  # 16 batches an epoch, the last of 40: its step gathers 64 + 40 items
    out = _train_in_two_processes(tmp_path, raw)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (run_dir,) = (tmp_path / "home" / "runs").glob("cat-two-tower-*")
    trained = torch.load(run_dir / CHECKPOINT, weights_only=False)["model"]

    trainer = build(raw, tmp_path / "reference")
    trainer._train_csr = trainer.dataset.matrix("train")
    n_items = trainer.model.n_items
    both, alone = StreamingFrequency(n_items, 0.1), StreamingFrequency(n_items, 0.1)
    for epoch in range(2):
        batches = list(trainer._sampler(epoch))
        for first, second in zip(batches[0::2], batches[1::2], strict=False):
            both.update(torch.cat([first["targets"], second["targets"]]))
            alone.update(first["targets"])
    for name, value in both.state_dict().items():
        torch.testing.assert_close(trained[f"streaming.{name}"], value, msg=name)
    assert not torch.allclose(trained["streaming.gap"], alone.gap)  # the check can fail


def test_concat_cuts_each_process_padding(monkeypatch):
    import torch
    import torch.distributed as dist

    from recsys.distributed import DataParallel

    other = torch.tensor([9.0])  # process 1 holds one value, process 0 three

    def all_gather(out, tensor):
        out[0].copy_(tensor)
        if tensor.dtype == torch.long and tensor.numel() == 1:  # the sizes
            out[1].fill_(other.numel())
        else:
            out[1].zero_()
            out[1][: other.numel()] = other

    monkeypatch.setattr(dist, "all_gather", all_gather)
    got = DataParallel(0, 2).concat(torch.tensor([1.0, 2.0, 3.0]))
    assert got.tolist() == [1.0, 2.0, 3.0, 9.0]


def test_a_group_of_one_process_is_no_data_parallel_training(tmp_path):
    import torch.distributed as dist

    from recsys.distributed import current

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert current() is None
    finally:
        dist.destroy_process_group()


def test_barrier_holds_each_process_until_all_arrive_and_can_be_passed_again(monkeypatch):
    """The store barrier (gloo's own left a worker thread freeing Python tensors while a leaving process
    finalized Python): process 1 waits for process 0, every time, and a second barrier is a new one."""
    import threading
    import time

    import torch.distributed as dist

    class CountPerThread(threading.local):  # each "process" counts its own barriers, as real ones do
        def __init__(self) -> None:
            self.count = itertools.count()

        def __next__(self) -> int:
            return next(self.count)

    store = dist.HashStore()  # what the processes share through torchrun
    monkeypatch.setattr(distributed, "_default_store", lambda: store)
    monkeypatch.setattr(distributed, "_BARRIERS", CountPerThread())
    events: list[str] = []

    def process(rank: int) -> None:
        dp = DataParallel(rank, 2)
        for round_ in range(2):
            if rank == 0:
                time.sleep(0.3)  # process 0 is late: testing and logging
                events.append(f"0 arrives {round_}")
            dp.barrier()
            events.append(f"{rank} leaves {round_}")

    threads = [threading.Thread(target=process, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    for round_ in range(2):
        arrives = events.index(f"0 arrives {round_}")
        assert events.index(f"1 leaves {round_}") > arrives and events.index(f"0 leaves {round_}") > arrives
    assert events.index("1 leaves 0") < events.index("0 arrives 1")  # round 0 let process 1 go at once

"""DNIS (Cheng et al. 2020): feature blocks by frequency, the soft selection layer, alpha's validation step,
pruning, and the three training phases under the one trainer."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.nn import functional as F

from recsys.config import ConfigError, validate_config
from recsys.models import build_model
from recsys.models.dnis import DNIS, block_sizes, rank_blocks
from tests.test_trainer import build, crash_and_resume, make_cfg, write_synthetic_interactions


def small_dnis(**over) -> DNIS:
    """4 users and 6 items, d = 4: two feature blocks of 5 ids, two dimension blocks of 2 dimensions."""
    torch.manual_seed(0)
    cfg = {
        "name": "dnis",
        "base": {"name": "mf_bpr", "dim": 4},
        "feature_blocks": [0.5, 0.5],
        "dim_blocks": 2,
    }
    model = build_model({**cfg, **over}, 4, 6)
    # user 0 is the busiest user, items 0 and 1 the busiest items: with users (4 ids) and items (6 ids) ranked
    # together, the top half (5 ids) is users 0 and 1 (3 and 2 items), items 0 and 1 (3 each) and user 2 (1)
    train = sp.csr_matrix(
        np.array(
            [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]], dtype=np.float32
        )
    )
    model.prepare(train)
    return model


def test_blocks_follow_frequency_and_the_official_split_rule():
    assert block_sizes(10, [0.25, 0.75]) == [2, 8]
    assert block_sizes(7, [0.5, 0.5]) == [3, 4]  # the last block takes the rest
    assert block_sizes(100, [0.29, 0.71]) == [29, 71]  # 0.29 * 100 is 28.999... in floating point
    assert block_sizes(49, [1 / 49] * 49) == [1] * 49  # (1 / 49) * 49 is 0.999...: no empty blocks
    counts = np.array([5, 1, 9, 1, 3])
    assert rank_blocks(counts, [0.4, 0.6]).tolist() == [0, 1, 0, 1, 1]  # 9 and 5 first; ties by index
    model = small_dnis()
    # counts: users 3, 2, 1, 1; items 3, 3, 1, 0, 0, 0 -> top five: u0, i0, i1, u1, then u2 (tie with u3, i2)
    assert model.feature_block_0.tolist() == [0, 0, 0, 1]
    assert model.feature_block_1.tolist() == [0, 0, 1, 1, 1, 1]


def test_the_selection_layer_scales_each_dimension_block_of_each_feature_block():
    model = small_dnis()
    model.alpha.copy_(torch.tensor([[1.0, 0.5], [0.25, 0.0]]))
    users, items = model.base.user_emb.weight, model.base.item_emb.weight
    want_users = users * torch.tensor([[1, 1, 0.5, 0.5]] * 3 + [[0.25, 0.25, 0, 0]])
    want_items = items * torch.tensor([[1, 1, 0.5, 0.5]] * 2 + [[0.25, 0.25, 0, 0]] * 4)
    torch.testing.assert_close(model.query_embeddings(torch.arange(4)), want_users.detach())
    torch.testing.assert_close(model.item_embeddings(), want_items.detach())
    batch = {"users": torch.tensor([0, 3]), "pos": torch.tensor([0, 1]), "neg": torch.tensor([5, 2])}
    _, parts = model.loss(batch)
    scores = lambda i: (want_users[batch["users"]] * want_items[batch[i]]).sum(-1)  # noqa: E731
    torch.testing.assert_close(parts["bpr"], F.softplus(scores("neg") - scores("pos")).mean())


def test_alpha_step_descends_the_validation_bpr_loss_and_leaves_the_weights_alone():
    model = small_dnis(lr_alpha=0.1, l1=0.01)
    model.alpha.copy_(torch.tensor([[0.9, 0.6], [0.3, 0.7]]))
    before = {k: v.clone() for k, v in model.base.state_dict().items()}
    batch = {"users": torch.tensor([0, 1, 3]), "pos": torch.tensor([2, 1, 4]), "neg": torch.tensor([5, 0, 3])}
    # the same objective written out by hand, alpha as a leaf
    alpha = model.alpha.clone().requires_grad_(True)
    scale = lambda blocks: alpha.repeat_interleave(2, dim=1)[blocks]  # noqa: E731
    u = model.base.user_emb.weight.detach() * scale(model.feature_block_0)
    i = model.base.item_emb.weight.detach() * scale(model.feature_block_1)
    s = lambda it: (u[batch["users"]] * i[batch[it]]).sum(-1)  # noqa: E731
    objective = F.softplus(s("neg") - s("pos")).mean() + 0.01 * alpha.abs().sum()
    (grad,) = torch.autograd.grad(objective, alpha)
    want = (alpha.detach() - 0.1 * grad / (grad.abs().mean(1, keepdim=True) + 1e-8)).clamp(0, 1)

    model.alpha_step(batch)
    torch.testing.assert_close(model.alpha, want)
    for k, v in model.base.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_pruning_keeps_the_largest_scaled_entries_over_all_tables():
    model = small_dnis(keep=0.25)
    model.alpha.copy_(torch.tensor([[1.0, 0.5], [0.2, 0.0]]))
    scaled = torch.cat([model.query_embeddings(torch.arange(4)), model.item_embeddings()]).abs()
    model.prune()
    kept = torch.cat([model.keep_mask_0, model.keep_mask_1])
    assert model.kept_fraction() == kept.float().mean().item() == 0.25  # 10 of 40 entries
    assert scaled[kept].min() > scaled[~kept].max()
    assert not kept[scaled == 0].any()  # the alpha = 0 entries were the first to go
    after = torch.cat([model.query_embeddings(torch.arange(4)), model.item_embeddings()])
    assert torch.equal(after[~kept], torch.zeros_like(after[~kept]))
    torch.testing.assert_close(after[kept].abs(), scaled[kept])


def test_pruning_keeps_the_exact_share_when_magnitudes_tie():
    model = small_dnis(keep=0.5)
    with torch.no_grad():
        model.base.user_emb.weight.fill_(0.3)
        model.base.item_emb.weight.fill_(0.3)
    model.prune()
    assert model.kept_fraction() == 0.5


def test_reset_parameters_undoes_a_pruning():
    model = small_dnis(keep=0.5)
    model.prune()
    assert model.kept_fraction() == 0.5
    model.reset_parameters()
    assert not bool(model.pruned)
    assert model.kept_fraction() == 1.0  # the masks went with the pruning they came from
    assert (model.item_embeddings() != 0).all()
    model.prune()  # a new pruning ranks the re-drawn weights, none pre-zeroed by the old masks
    assert model.kept_fraction() == 0.5


def test_a_copy_scales_by_its_own_alpha_and_the_model_pickles(tmp_path):
    import copy
    import pickle

    model = small_dnis()
    clone = copy.deepcopy(model)
    model.alpha.zero_()
    assert clone.item_embeddings().abs().sum() > 0  # the clone's tables read the clone's alpha
    assert model.item_embeddings().abs().sum() == 0
    restored = pickle.loads(pickle.dumps(clone))
    torch.testing.assert_close(restored.item_embeddings(), clone.item_embeddings())


def test_lightgcn_propagates_the_scaled_tables():
    torch.manual_seed(0)
    train = sp.random(20, 30, density=0.2, format="csr", random_state=1)
    train.data[:] = 1
    model = build_model({"name": "dnis", "base": {"name": "lightgcn", "dim": 8, "layers": 2}}, 20, 30)
    model.prepare(train)
    model.alpha.uniform_(0, 1, generator=torch.Generator().manual_seed(3))
    plain = build_model({"name": "lightgcn", "dim": 8, "layers": 2}, 20, 30)
    plain.prepare(train)
    with torch.no_grad():
        plain.user_emb.weight.copy_(model.base.user_emb.all())
        plain.item_emb.weight.copy_(model.base.item_emb.all())
    for got, want in zip(model.embeddings(), plain.embeddings(), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("over", "key", "message"),
    [
        ({"base": {"name": "sasrec"}}, "model.base", "must be one of mf_bpr, lightgcn, dccf"),
        ({"base": {"name": "mf_bpr", "dimm": 3}}, "model.base", "dimm"),
        ({"feature_blocks": [0.5, 0.4]}, "model.feature_blocks", "sum to 1"),
        ({"dim_blocks": 65}, "model", "cannot exceed the wrapped model's dim (64)"),
        ({"keep": 0}, "model.keep", "greater than 0"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, over, key, message):
    raw = make_cfg(tmp_path / "x.csv")
    raw["model"] = {"name": "dnis", "base": {"name": "mf_bpr"}, **over}
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    assert key in str(err.value) and message in str(err.value)


def dnis_cfg(csv, **model):
    raw = make_cfg(csv, epochs=7, early_stopping={"metric": "ndcg@10", "patience": 2})
    raw["model"] = {
        "name": "dnis",
        "base": {"name": "mf_bpr", "dim": 16},
        "feature_blocks": [0.2, 0.3, 0.5],
        "dim_blocks": 4,
        "warm_start_epochs": 2,
        "search_epochs": 2,
        "lr_alpha": 0.05,
        "keep": 0.5,
        **model,
    }
    return raw


class AlphaRecorder:
    def __init__(self) -> None:
        self.alphas: list[torch.Tensor] = []

    def on_epoch_end(self, trainer, epoch, record):
        self.alphas.append(trainer.model.alpha.clone())


def test_phases_under_the_trainer(tmp_path):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    trainer = build(dnis_cfg(csv), tmp_path / "run")
    recorder = AlphaRecorder()
    trainer.hooks.append(recorder)
    state = trainer.fit()
    a = recorder.alphas
    assert torch.equal(a[0], torch.ones_like(a[0])) and torch.equal(a[1], a[0])  # warm start: alpha = 1
    assert not torch.equal(a[2], a[1]) and not torch.equal(a[3], a[2])  # search: alpha learns
    assert all(torch.equal(x, a[3]) for x in a[4:])  # tuning: frozen
    assert bool(trainer.model.pruned) and trainer.model.kept_fraction() == pytest.approx(0.5, abs=1e-3)
    assert state.best_epoch > 4


def test_only_tuning_epochs_are_chosen(tmp_path):
    # keep 2%: the pruned model is far worse than the warm-start one, which must still not be the one tested
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    state = build(dnis_cfg(csv, keep=0.02), tmp_path / "run").fit()
    early = max(h["valid/ndcg@10"] for h in state.history[:4])
    assert early > state.best_metric  # the gate mattered: a search-phase epoch validated better
    assert state.best_epoch > 4
    tuned = [h["valid/ndcg@10"] for h in state.history[4:]]
    assert state.best_metric == max(tuned)


def test_resume_after_a_crash_in_the_search_is_exact(tmp_path):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    # no warm start: the crash (epoch 1) falls in the second search epoch, after a checkpoint with a learned
    # alpha; the resumed run must replay epoch 1's training and validation batches exactly
    straight, resumed = crash_and_resume(dnis_cfg(csv, warm_start_epochs=0), tmp_path)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


@pytest.mark.parametrize(
    ("train", "split", "message"),
    [
        ({"epochs": 4}, {}, r"train.epochs \(4\) must exceed .*\(4\)"),
        ({"max_steps": 60}, {}, r"train.max_steps \(60\) ends training before the first tuning epoch"),
        ({}, {"valid_ratio": 0.0}, "the dataset has none"),
    ],
)
def test_a_run_that_cannot_reach_its_pruned_model_stops_before_training(tmp_path, train, split, message):
    csv = write_synthetic_interactions(tmp_path / "x.csv")
    raw = dnis_cfg(csv)
    raw["train"].update(train)
    if split:  # without a validation split, early stopping is refused before DNIS could say anything
        del raw["train"]["early_stopping"]
    raw["data"]["split"].update(split)
    trainer = build(raw, tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        trainer.fit()
    assert trainer.state.step == 0


def test_alpha_is_clipped_to_the_unit_interval():
    """A step larger than the distance to a bound lands on the bound (the selection weights of the paper lie
    in [0, 1]): with lr 10, every weight whose normalised gradient is non-zero ends at exactly 0 or 1."""
    model = small_dnis(lr_alpha=10.0, l1=0.0)
    model.alpha.copy_(torch.tensor([[0.9, 0.6], [0.3, 0.7]]))
    batch = {"users": torch.tensor([0, 1, 3]), "pos": torch.tensor([2, 1, 4]), "neg": torch.tensor([5, 0, 3])}
    grad, _ = model.alpha_gradient(batch)
    model.alpha_step(batch)
    moved = grad != 0
    assert bool(moved.any())
    assert bool(((model.alpha[moved] == 0.0) | (model.alpha[moved] == 1.0)).all()), model.alpha
    assert float(model.alpha.min()) >= 0.0 and float(model.alpha.max()) <= 1.0


def test_validation_negatives_are_in_neither_training_nor_validation():
    """Alpha descends the BPR loss on (user, validation item, negative): a negative the user has in the
    validation split would be a positive scored as a negative. Each user here has two training items, three
    validation items and a single item in neither, so every drawn negative must be that one."""
    from types import SimpleNamespace

    model = small_dnis()
    train = np.zeros((4, 6), dtype=np.float32)
    valid = np.zeros((4, 6), dtype=np.float32)
    for u in range(4):
        items = np.roll(np.arange(6), -u)  # user u: train u, u+1; valid u+2..u+4; free item u+5 (mod 6)
        train[u, items[:2]] = 1
        valid[u, items[2:5]] = 1
    matrices = {"train": sp.csr_matrix(train), "valid": sp.csr_matrix(valid)}
    trainer = SimpleNamespace(
        dataset=SimpleNamespace(matrix=lambda split: matrices[split]),
        cfg=SimpleNamespace(seed=0),
        tc=SimpleNamespace(batch_size=4),
        dp=None,
    )
    batches = model._validation_batches(trainer, epoch=0)
    for _ in range(10):
        batch = next(batches)
        assert bool((valid[batch["users"].numpy(), batch["pos"].numpy()] == 1).all())
        assert batch["neg"].tolist() == ((batch["users"] + 5) % 6).tolist()


def test_dimensions_per_block_is_the_mean_over_the_blocks_ids():
    """The report of the search: alpha = [[1, 0.5], [0.25, 0]] keeps all 4 dimensions of the ids of feature
    block 0 and the first dimension block (2 dimensions) of block 1, whatever the number of ids per block."""
    model = small_dnis()
    model.alpha.copy_(torch.tensor([[1.0, 0.5], [0.25, 0.0]]))
    assert model.dimensions_per_block() == [4.0, 2.0]

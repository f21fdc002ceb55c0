"""LightGCN: loss parts, exactness of the fast training path against a dense reference and against
torch-geometric's LightGCN, cached scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.nn import functional as F

from recsys.models import LightGCN, LightGCNConfig, build_model


def small_train(n_users=12, n_items=15, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.3).astype(np.float32)
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1  # every user has a training item
    return sp.csr_matrix(dense)


def dense_final_embeddings(model: LightGCN, train: sp.csr_matrix):
    """Layer mean of Â^k E0 with a dense, independently built Â (float64, differentiable)."""
    r = torch.from_numpy(train.toarray()).double()
    du, di = r.sum(1), r.sum(0)
    rn = r / torch.sqrt(du.clamp(min=1))[:, None] / torch.sqrt(di.clamp(min=1))[None, :]
    u, i = model.user_emb.weight.double(), model.item_emb.weight.double()
    su, si = u, i
    for _ in range(model.config.layers):
        u, i = rn @ i, rn.T @ u
        su, si = su + u, si + i
    k = model.config.layers + 1
    return su / k, si / k


def batch():
    # repeated users and items, a positive that is also someone's negative
    return {
        "users": torch.tensor([0, 3, 3, 7, 11, 0]),
        "pos": torch.tensor([1, 2, 2, 9, 14, 4]),
        "neg": torch.tensor([5, 6, 9, 0, 3, 5]),
    }


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_loss_and_gradients_equal_dense_reference(layers):
    train = small_train(seed=layers)
    torch.manual_seed(0)
    model = build_model({"name": "lightgcn", "dim": 8, "layers": layers, "reg": 1e-2}, 12, 15)
    model.prepare(train)
    b = batch()
    total, parts = model.loss(b)
    total.backward()
    g_user, g_item = model.user_emb.weight.grad.clone(), model.item_emb.weight.grad.clone()
    model.zero_grad()

    fu, fi = dense_final_embeddings(model, train)
    e_u, e_i, e_j = fu[b["users"]], fi[b["pos"]], fi[b["neg"]]
    bpr = F.softplus((e_u * e_j).sum(-1) - (e_u * e_i).sum(-1)).mean()
    u0, i0, j0 = (
        model.user_emb.weight.double()[b["users"]],
        model.item_emb.weight.double()[b["pos"]],
        model.item_emb.weight.double()[b["neg"]],
    )
    reg = 1e-2 * 0.5 * (u0.pow(2).sum() + i0.pow(2).sum() + j0.pow(2).sum()) / 6
    (bpr + reg).backward()

    assert set(parts) == {"bpr", "reg"}
    parts = {k: v.item() for k, v in parts.items()}
    assert parts["bpr"] + parts["reg"] == pytest.approx(total.item(), abs=1e-7)
    assert parts["bpr"] == pytest.approx(bpr.item(), abs=1e-6)
    assert parts["reg"] == pytest.approx(reg.item(), rel=1e-5)
    torch.testing.assert_close(g_user.double(), model.user_emb.weight.grad.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_item.double(), model.item_emb.weight.grad.double(), atol=1e-5, rtol=1e-5)


def test_propagate_equals_dense_and_batch_rows():
    train = small_train()
    model = build_model({"name": "lightgcn", "dim": 6}, 12, 15)
    model.prepare(train)
    fu, fi = model.propagate()
    ru, ri = dense_final_embeddings(model, train)
    torch.testing.assert_close(fu.double(), ru, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fi.double(), ri, atol=1e-5, rtol=1e-5)
    users, items = torch.tensor([1, 4, 10]), torch.tensor([0, 7, 14])
    bu, bi, e0u, e0i = model.batch_embeddings(users, items)
    torch.testing.assert_close(bu, fu[users], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(bi, fi[items], atol=1e-6, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch-geometric internals use torch.jit.script
def test_final_embeddings_equal_torch_geometric():
    from torch_geometric.nn.models import LightGCN as PygLightGCN

    train = small_train(n_users=20, n_items=25, seed=3)
    model = build_model({"name": "lightgcn", "dim": 8, "layers": 3}, 20, 25)
    model.prepare(train)
    coo = train.tocoo()
    row = torch.from_numpy(coo.row.astype(np.int64))
    col = torch.from_numpy(coo.col.astype(np.int64)) + 20
    edge_index = torch.stack([torch.cat([row, col]), torch.cat([col, row])])
    pyg = PygLightGCN(45, 8, 3)  # normalises the raw edge_index itself (gcn_norm, no self loops)
    with torch.no_grad():
        pyg.embedding.weight.copy_(torch.cat([model.user_emb.weight, model.item_emb.weight]))
        ref = pyg.get_embedding(edge_index)
    fu, fi = model.propagate()
    torch.testing.assert_close(torch.cat([fu, fi]).detach(), ref, atol=1e-5, rtol=1e-5)
    # the inference path and the scorer agree too
    torch.testing.assert_close(model.item_embeddings(), ref[20:], atol=1e-5, rtol=1e-5)
    scores = model.scorer()(torch.tensor([0, 19]))
    torch.testing.assert_close(scores, ref[[0, 19]] @ ref[20:].T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_scores_follow_parameter_updates(fused):
    """Scores after an optimiser step reflect the new weights (fused Adam updates in place without bumping
    version counters, so nothing may be cached across steps)."""
    train = small_train()
    model = build_model("lightgcn", 12, 15)
    model.prepare(train)
    users = torch.arange(12)
    before = model.scorer()(users)
    opt = torch.optim.Adam(model.parameters(), lr=0.1, fused=fused)
    model.loss(batch())[0].backward()
    opt.step()
    after = model.scorer()(users)
    assert not torch.allclose(before, after)
    fu, fi = model.propagate()
    torch.testing.assert_close(after, fu[users] @ fi.T)
    torch.testing.assert_close(model.query_embeddings(users), fu[users].detach())
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert float(model.scorer()(users).abs().max()) == 0.0


def test_one_training_step_reduces_loss():
    train = small_train()
    torch.manual_seed(1)
    model = build_model({"name": "lightgcn", "dim": 16, "reg": 0.0}, 12, 15)
    model.prepare(train)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        total, _ = model.loss(batch())
        total.backward()
        opt.step()
        losses.append(total.item())
    assert losses[-1] < losses[0] < math.log(2) + 0.05


def test_config_defaults_repr_and_errors():
    cfg = LightGCNConfig()
    assert (cfg.dim, cfg.layers, cfg.reg, cfg.init_std) == (64, 3, 1e-4, 0.1)
    model = LightGCN(5, 6, cfg)
    assert "layers=3" in repr(model) and "IdEmbedding(5, 64" in repr(model)
    with pytest.raises(RuntimeError, match="prepare"):
        model.loss(batch())
    with pytest.raises(ValueError, match="shape"):
        model.prepare(sp.csr_matrix((4, 6), dtype=np.float32))
    assert LightGCN.trainable
    before = model.user_emb.weight.detach().clone()
    model.reset_parameters()
    assert not torch.equal(before, model.user_emb.weight)
    assert model.user_emb.weight.std().item() == pytest.approx(0.1, rel=0.3)


def test_deepcopy_and_pickle_keep_a_working_model():
    import copy
    import io

    train = small_train()
    model = build_model({"name": "lightgcn", "dim": 4}, 12, 15)
    model.prepare(train)
    users = torch.tensor([0, 5])
    expected = model.scorer()(users)
    clone = copy.deepcopy(model)  # e.g. a best-so-far snapshot: the graph is shared, the weights copied
    torch.testing.assert_close(clone.scorer()(users), expected)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf, weights_only=False).scorer()(users), expected)


@pytest.mark.parametrize("name", ["lightgcn", "dccf"])
def test_the_graph_follows_the_parameters_dtype(name):
    """Cast before prepare: a float64 graph (LightGCN's was float32 whatever the parameters). Cast after: a
    message saying what to do, not sparse_mm's bare dtype error."""
    train = small_train()
    model = build_model({"name": name, "dim": 4}, *train.shape).double()
    model.prepare(train)
    users, items = model.embeddings()
    assert users.dtype == items.dtype == torch.float64
    model = build_model({"name": name, "dim": 4}, *train.shape)
    model.prepare(train)
    model.double()
    with pytest.raises(RuntimeError, match="graph was built in torch.float32: call prepare\\(train\\) again"):
        model.embeddings()
    model.prepare(train)
    assert model.embeddings()[0].dtype == torch.float64

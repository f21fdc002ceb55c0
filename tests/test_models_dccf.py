"""DCCF against a dense float64 reference written from the paper's equations, and hand-computed cases.

The reference builds the full ``(NU+NI) x (NU+NI)`` adjacency with both directions of every edge (as the official
code's edge lists do), so it shares nothing with the model's CSR code paths.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.nn import functional as F

from recsys.models import DCCF, DCCFConfig, build_model

NU, NI = 5, 6


def small_train() -> sp.csr_matrix:
    rows = [0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4]
    cols = [0, 1, 1, 2, 3, 0, 4, 5, 2, 3, 5]
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(NU, NI))


def make_model(**overrides) -> DCCF:
    torch.manual_seed(0)
    cfg = DCCFConfig(dim=4, intents=3, **overrides)
    model = DCCF(NU, NI, cfg).double()
    model.prepare(small_train())
    return model


# ---- the dense reference ------------------------------------------------------------------------------------
def dense_adjacency(train: sp.csr_matrix) -> torch.Tensor:
    r = torch.tensor(train.toarray(), dtype=torch.float64)
    a = torch.zeros(NU + NI, NU + NI, dtype=torch.float64)
    a[:NU, NU:] = r
    a[NU:, :NU] = r.T
    return a


def reference_views(model: DCCF, train: sp.csr_matrix):
    """Per layer: (E_l, Z, R, M_Z E, M_R E) and the layer sum, from dense matrices."""
    c = model.config
    a = dense_adjacency(train)
    deg = a.sum(1)
    dinv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    g = dinv[:, None] * a * dinv[None, :]
    e = torch.cat([model.user_emb.weight, model.item_emb.weight])
    layers, out = [e], []
    for _ in range(c.layers):
        z = g @ e
        parts = [z]
        r = None
        if c.disentangle:
            r_u = torch.softmax(e[:NU] @ model.user_intent, 1) @ model.user_intent.T
            r_i = torch.softmax(e[NU:] @ model.item_intent, 1) @ model.item_intent.T
            r = torch.cat([r_u, r_i])
            parts.append(r)

        def mask(view, e=e):
            n = F.normalize(view, dim=1)
            alpha = ((n @ n.T) + 1) / 2 * a  # only on edges
            return alpha / alpha.sum(1, keepdim=True).clamp_min(1e-300) @ e

        ml = mask(z) if c.mask_local else None
        mg = mask(r) if (c.mask_global and c.disentangle) else None
        parts += [p for p in (ml, mg) if p is not None]
        out.append((z, r, ml, mg))
        e = sum(parts) + e
        layers.append(e)
    return layers, out


def reference_loss(model: DCCF, train, users, pos, neg):
    c = model.config
    layers, out = reference_views(model, train)
    final = sum(layers)
    eu, ei, ej = final[users], final[NU + pos], final[NU + neg]
    bpr = F.softplus((eu * ej).sum(1) - (eu * ei).sum(1)).mean()
    e0 = layers[0]
    emb = c.emb_reg * (e0[users].norm() ** 2 + e0[NU + pos].norm() ** 2 + e0[NU + neg].norm() ** 2)
    total = bpr + emb
    if c.disentangle:
        total = total + c.intent_reg * (model.user_intent.norm() ** 2 + model.item_intent.norm() ** 2)
    if c.contrastive:
        uu, ii = torch.unique(users), torch.unique(pos)

        def nce(x, y):
            x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
            pos_s = torch.exp((x * y).sum(1) / c.temperature)
            neg_s = torch.exp(x @ y.T / c.temperature).sum(1)
            return -torch.log(pos_s / neg_s).mean()

        ssl = 0.0
        for z, r, ml, mg in out:
            for v in (r, ml, mg):
                if v is not None:
                    ssl = ssl + nce(z[uu], v[uu]) + nce(z[NU + ii], v[NU + ii])
        total = total + c.ssl_reg * ssl
    return total


BATCH = {
    "users": torch.tensor([0, 1, 1, 3, 4, 2]),
    "pos": torch.tensor([1, 2, 3, 5, 2, 0]),
    "neg": torch.tensor([4, 0, 5, 0, 1, 3]),
}


# ---- tests --------------------------------------------------------------------------------------------------
def test_registered_with_paper_defaults():
    model = build_model({"name": "dccf"}, 10, 12)
    c = model.config
    assert isinstance(model, DCCF)
    assert (c.dim, c.layers, c.intents, c.emb_reg, c.intent_reg, c.ssl_reg, c.temperature) == (
        32,
        2,
        128,
        2.5e-5,
        5e-3,
        0.1,
        1.0,
    )
    assert model.user_intent.shape == (32, 128) and model.item_intent.shape == (32, 128)


def test_mask_weights_by_hand():
    """User 0 has items 0 and 1. With a view where u0 = (1, 0), i0 = (1, 0), i1 = (0, 1): cos = 1 and 0, so
    alpha = 1 and 0.5, normalised over u0's row to 2/3 and 1/3; item 0's only edge from u0 among its users
    (u0, u2) gets alpha 1 and u2's edge alpha (cos(u2, i0) + 1)/2."""
    model = make_model()
    view_u = torch.zeros(NU, 2, dtype=torch.float64)
    view_i = torch.zeros(NI, 2, dtype=torch.float64)
    view_u[0] = torch.tensor([1.0, 0.0])
    view_u[2] = torch.tensor([-1.0, 0.0])  # u2 -- i0: cos = -1, alpha = 0
    view_i[0] = torch.tensor([1.0, 0.0])
    view_i[1] = torch.tensor([0.0, 1.0])
    view_u[1] = view_u[3] = view_u[4] = torch.tensor([1.0, 1.0])
    view_i[2:] = torch.tensor([1.0, 1.0])
    e_u = torch.arange(NU * 3, dtype=torch.float64).reshape(NU, 3)
    e_i = torch.arange(NI * 3, dtype=torch.float64).reshape(NI, 3) * 10
    to_u, to_i = model.masked_message(view_u, view_i, e_u, e_i)
    torch.testing.assert_close(to_u[0], 2 / 3 * e_i[0] + 1 / 3 * e_i[1])
    # item 0: users 0 (alpha 1) and 2 (alpha 0) -> all weight on user 0
    torch.testing.assert_close(to_i[0], e_u[0])
    # item 1: users 0 (alpha 0.5, cos(u0=(1,0), i1=(0,1)) = 0) and 1 (cos((1,1),(0,1)) = 1/sqrt2)
    a0, a1 = 0.5, (1 / math.sqrt(2) + 1) / 2
    torch.testing.assert_close(to_i[1], (a0 * e_u[0] + a1 * e_u[1]) / (a0 + a1))


def test_intent_message_by_hand():
    model = make_model()
    c = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)  # d = 2, K = 2
    e = torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # e C = (1, 2)
    w = torch.tensor([math.exp(1), math.exp(2)]) / (math.exp(1) + math.exp(2))
    expected = (w[0] * c[:, 0] + w[1] * c[:, 1]).to(torch.float64)
    torch.testing.assert_close(model.intent_message(e, c)[0], expected)


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"disentangle": False},
        {"mask_local": False},
        {"mask_global": False},
        {"mask_local": False, "mask_global": False},
        {"contrastive": False},
        {"layers": 3, "temperature": 0.5},
    ],
)
def test_views_loss_and_gradients_match_dense_reference(flags):
    model = make_model(**flags)
    train = small_train()
    views = model.forward_views()
    ref_layers, ref_out = reference_views(model, train)
    for got, want in zip(views.layers, ref_layers, strict=True):
        torch.testing.assert_close(got, want)
    for layer, (z, r, ml, mg) in enumerate(ref_out):
        torch.testing.assert_close(views.graph[layer], z)
        for got, want in (
            (views.intent[layer], r),
            (views.mask_local[layer], ml),
            (views.mask_global[layer], mg),
        ):
            assert (got is None) == (want is None)
            if want is not None:
                torch.testing.assert_close(got, want)
    # the final embedding is the sum of the layers, not their mean
    torch.testing.assert_close(views.final, sum(ref_layers))

    total, parts = model.loss(BATCH)
    torch.testing.assert_close(sum(parts.values()), total)
    grads = torch.autograd.grad(total, [p for p in model.parameters()])
    ref = reference_loss(model, train, BATCH["users"], BATCH["pos"], BATCH["neg"])
    ref_grads = torch.autograd.grad(ref, [p for p in model.parameters()])
    torch.testing.assert_close(total, ref)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg)
    assert ("ssl" in parts) == model.config.contrastive
    assert ("intent_reg" in parts) == model.config.disentangle


def test_loss_parts_by_hand():
    """BPR is the mean softplus; the embedding L2 counts repeated batch rows; the prototype term is the
    squared Frobenius norms."""
    model = make_model(contrastive=False)
    total, parts = model.loss(BATCH)
    final = model.forward_views().final.detach()
    u, p, n = BATCH["users"], BATCH["pos"], BATCH["neg"]
    diff = (final[u] * final[NU + n]).sum(1) - (final[u] * final[NU + p]).sum(1)
    torch.testing.assert_close(parts["bpr"], torch.log1p(torch.exp(diff)).mean())
    w_u, w_i = model.user_emb.weight.detach(), model.item_emb.weight.detach()
    sq = sum(float(w_u[x] @ w_u[x]) for x in u) + sum(float(w_i[x] @ w_i[x]) for x in torch.cat([p, n]))
    assert parts["emb_reg"].item() == pytest.approx(2.5e-5 * sq, rel=1e-12)
    c_sq = float((model.user_intent.detach() ** 2).sum() + (model.item_intent.detach() ** 2).sum())
    assert parts["intent_reg"].item() == pytest.approx(5e-3 * c_sq, rel=1e-12)


def test_contrastive_term_counts():
    """2 layers x 3 views x 2 sides InfoNCE terms; removing a view removes its terms."""
    full = make_model()
    no_local = make_model(mask_local=False)
    views_full, views_nl = full.forward_views(), no_local.forward_views()
    users, items = torch.unique(BATCH["users"]), torch.unique(BATCH["pos"])
    assert (
        full.contrastive_loss(views_full, users, items)
        > no_local.contrastive_loss(views_nl, users, items)
        > 0
    )


def test_final_embeddings_match_views_and_serve_through_base_scorer():
    model = make_model()
    users, items = model.embeddings()
    final = model.forward_views().final
    torch.testing.assert_close(users, final[:NU])
    torch.testing.assert_close(items, final[NU:])
    score = model.scorer()
    torch.testing.assert_close(score(torch.tensor([1, 3])), final[[1, 3]] @ final[NU:].T)


def test_no_dense_node_by_node_tensor(monkeypatch):
    """Every tensor created during a step has at most max(NU, NI, E) rows x d (no N x N, E x E or E x d)."""
    model = make_model()
    rng = np.random.default_rng(0)
    n_u, n_i = 300, 400
    dense = (rng.random((n_u, n_i)) < 0.05).astype(np.float32)
    train = sp.csr_matrix(dense)
    big = DCCF(n_u, n_i, DCCFConfig(dim=8, intents=4))
    big.prepare(train)
    nnz = train.nnz
    largest = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and not out.is_sparse_csr and out.dim() == 2:
                largest.append(out.numel())
            return out

    batch = {
        "users": torch.randint(0, n_u, (64,)),
        "pos": torch.randint(0, n_i, (64,)),
        "neg": torch.randint(0, n_i, (64,)),
    }
    with Spy():
        total, _ = big.loss(batch)
        total.backward()
    assert max(largest) <= max((n_u + n_i) * 8, 64 * 64, n_u * 4 * 8)
    assert max(largest) < nnz * 8  # nothing of edges x d
    del model


def test_trains_on_synthetic_data():
    rng = np.random.default_rng(1)
    groups_u = rng.integers(0, 3, 60)
    groups_i = rng.integers(0, 3, 45)
    dense = (groups_u[:, None] == groups_i[None, :]) & (rng.random((60, 45)) < 0.5)
    train = sp.csr_matrix(dense.astype(np.float32))
    torch.manual_seed(0)
    model = DCCF(60, 45, DCCFConfig(dim=8, intents=4))
    model.prepare(train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    from recsys.sampling import BPRSampler

    sampler = BPRSampler(
        train, mode="users", batch_size=128, generator=torch.Generator().manual_seed(0), steps=5
    )
    first = last = None
    for _ in range(8):
        for batch in sampler:
            loss, parts = model.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            first = parts["bpr"].item() if first is None else first
            last = parts["bpr"].item()
    assert last < 0.5 * first
    scores = model.scorer()(torch.arange(60))
    top = scores.argmax(1).numpy()
    assert (groups_i[top] == groups_u).mean() > 0.9

"""recsys.graph: the normalised adjacency, CSR slicing, and the exact fast propagation (values and gradients
against dense references)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.graph import (
    NormalizedBipartite,
    _csr_transpose_sort,
    csr_rows,
    csr_transpose,
    layer_mean_at_rows,
    normalized_adjacency,
    sparse_matmul,
    torch_csr,
)


def random_train(n_users=13, n_items=17, density=0.25, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    dense[3] = 0  # an isolated user
    dense[:, 5] = 0  # an isolated item
    return sp.csr_matrix(dense)


def dense_norm_adj(train: sp.csr_matrix) -> np.ndarray:
    """D^-1/2 A D^-1/2 computed the obvious way, float64."""
    r = train.toarray().astype(np.float64)
    u, i = r.shape
    a = np.zeros((u + i, u + i))
    a[:u, u:] = r
    a[u:, :u] = r.T
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0.0)
    return inv[:, None] * a * inv[None, :]


def test_normalized_adjacency_matches_dense():
    train = random_train()
    adj = normalized_adjacency(train)
    assert adj.layout == torch.sparse_csr and adj.shape == (30, 30)
    dense = adj.to_dense().double().numpy()
    np.testing.assert_allclose(dense, dense_norm_adj(train), atol=1e-7)
    np.testing.assert_allclose(dense, dense.T)
    assert np.all(np.diag(dense) == 0)
    assert not dense[3].any() and not dense[13 + 5].any()  # isolated nodes have empty rows


def test_normalized_adjacency_ignores_values_and_duplicates():
    train = sp.coo_matrix(
        (np.array([5.0, 1.0, 1.0]), (np.array([0, 0, 1]), np.array([1, 1, 0]))), shape=(2, 2)
    )
    dense = normalized_adjacency(train).to_dense().numpy()
    # user 0 -- item 1 (duplicate entry, value 5), user 1 -- item 0: both edges have degree 1 at both ends
    assert dense[0, 3] == pytest.approx(1.0) and dense[1, 2] == pytest.approx(1.0)


def test_duplicates_that_cancel_and_explicit_zeros_are_no_edge():
    """A pair counts when its summed value is non-zero: (0, 0) entered as +1 and -1 and (1, 1) stored as an
    explicit 0 are not edges; had they counted, user 0 would have degree 2."""
    values, users, items = np.array([1.0, -1.0, 1.0, 0.0, 1.0]), np.array([0, 0, 0, 1, 1]), [0, 0, 1, 1, 0]
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[0, 3] = expected[3, 0] = expected[1, 2] = expected[2, 1] = 1.0  # edges 0-1 and 1-0, degree 1
    # COO sums its duplicates when converted; a CSR built from arrays keeps them until summed
    as_coo = sp.coo_matrix((values, (users, items)), shape=(2, 2))
    as_csr = sp.csr_matrix((values, items, [0, 3, 5]), shape=(2, 2))
    assert as_csr.nnz == 5 and not as_csr.has_canonical_format
    for train in (as_coo, as_csr):
        np.testing.assert_allclose(normalized_adjacency(train).to_dense().numpy(), expected, atol=1e-7)


def test_bipartite_halves_are_the_blocks():
    train = random_train()
    g = NormalizedBipartite.from_train(train)
    full = dense_norm_adj(train)
    np.testing.assert_allclose(g.r.to_dense().numpy(), full[:13, 13:], atol=1e-7)
    np.testing.assert_allclose(g.rt.to_dense().numpy(), full[13:, :13], atol=1e-7)
    assert (g.n_users, g.n_items) == (13, 17)


def test_sparse_matmul_value_and_gradient():
    train = random_train()
    g = NormalizedBipartite.from_train(train)
    x = torch.randn(17, 4, dtype=torch.float32, requires_grad=True)
    y = sparse_matmul(g.r, g.rt, x)
    w = torch.randn(13, 4)
    (y * w).sum().backward()
    r = g.r.to_dense()
    torch.testing.assert_close(y, r @ x.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x.grad, r.T @ w, atol=1e-6, rtol=1e-5)


def test_csr_rows_any_order_with_repeats():
    a = torch_csr(random_train())
    rows = torch.tensor([4, 0, 4, 3, 12])
    torch.testing.assert_close(csr_rows(a, rows).to_dense(), a.to_dense()[rows])
    assert csr_rows(a, torch.tensor([], dtype=torch.long)).shape == (0, 17)


@pytest.mark.parametrize("transpose", [csr_transpose, _csr_transpose_sort])
def test_csr_transpose(transpose):
    a = csr_rows(torch_csr(random_train()), torch.tensor([7, 1, 3, 9]))
    t = transpose(a)
    assert t.shape == (17, 4)
    torch.testing.assert_close(t.to_dense(), a.to_dense().T)
    col, crow = t.col_indices(), t.crow_indices()
    for r in range(t.shape[0]):  # columns sorted inside every row
        seg = col[crow[r] : crow[r + 1]]
        assert torch.all(seg[1:] > seg[:-1])


def dense_reference(train, user_w, item_w, layers):
    """Layer mean of Â^k E^(0), dense float64, differentiable."""
    a = torch.from_numpy(dense_norm_adj(train))
    e = torch.cat([user_w, item_w]).double()
    out, x = e, e
    for _ in range(layers):
        x = a @ x
        out = out + x
    out = out / (layers + 1)
    n_users = user_w.shape[0]
    return out[:n_users], out[n_users:]


@pytest.mark.parametrize("layers", [0, 1, 2, 3, 4])
def test_layer_mean_at_rows_equals_dense_reference(layers):
    """Values and gradients of the fast path (last layer at the batch rows only, hand-written backward)
    equal a dense float64 computation, to 1e-5."""
    train = random_train(seed=layers)
    g = NormalizedBipartite.from_train(train)
    torch.manual_seed(layers)
    user_w = torch.randn(13, 5, requires_grad=True)
    item_w = torch.randn(17, 5, requires_grad=True)
    users = torch.tensor([0, 2, 3, 11])  # includes the isolated user
    items = torch.tensor([1, 5, 6, 16])  # includes the isolated item
    w_u, w_i = torch.randn(4, 5), torch.randn(4, 5)
    w0_u, w0_i = torch.randn(4, 5), torch.randn(4, 5)

    fin_u, fin_i, e0_u, e0_i = layer_mean_at_rows(g, user_w, item_w, users, items, layers)
    ((fin_u * w_u).sum() + (fin_i * w_i).sum() + (e0_u * w0_u).sum() + (e0_i * w0_i).sum()).backward()
    grads = user_w.grad.clone(), item_w.grad.clone()

    uw, iw = user_w.detach().double().requires_grad_(), item_w.detach().double().requires_grad_()
    ref_u, ref_i = dense_reference(train, uw, iw, layers)
    (
        (ref_u[users] * w_u.double()).sum()
        + (ref_i[items] * w_i.double()).sum()
        + (uw[users] * w0_u.double()).sum()
        + (iw[items] * w0_i.double()).sum()
    ).backward()
    torch.testing.assert_close(fin_u.double(), ref_u[users].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fin_i.double(), ref_i[items].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e0_u, user_w.detach()[users])
    torch.testing.assert_close(grads[0].double(), uw.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1].double(), iw.grad, atol=1e-5, rtol=1e-5)


def test_layer_mean_at_rows_partial_outputs_used():
    """Only some outputs take part in the loss (the others get no gradient): still exact."""
    train = random_train()
    g = NormalizedBipartite.from_train(train)
    user_w = torch.randn(13, 3, requires_grad=True)
    item_w = torch.randn(17, 3, requires_grad=True)
    fin_u, _, _, _ = layer_mean_at_rows(g, user_w, item_w, torch.tensor([1, 2]), torch.tensor([0]), 3)
    fin_u.sum().backward()
    uw, iw = user_w.detach().double().requires_grad_(), item_w.detach().double().requires_grad_()
    ref_u, _ = dense_reference(train, uw, iw, 3)
    ref_u[[1, 2]].sum().backward()
    torch.testing.assert_close(user_w.grad.double(), uw.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(item_w.grad.double(), iw.grad, atol=1e-5, rtol=1e-5)


# ---- CSRPattern: products with learned edge weights ------------------------------------------------------------
def _pattern_case():
    import scipy.sparse as sp

    from recsys.graph import CSRPattern, torch_csr

    m = sp.random(7, 5, density=0.45, random_state=3, format="csr")
    pattern = CSRPattern.from_csr(torch_csr(m))
    rows, cols = m.nonzero()
    order = np.lexsort((cols, rows))  # CSR order: by row, then column
    return (
        pattern,
        torch.as_tensor(rows[order], dtype=torch.long),
        torch.as_tensor(cols[order], dtype=torch.long),
    )


def test_pattern_products_match_dense_and_gradcheck():
    pattern, rows, cols = _pattern_case()
    torch.manual_seed(0)
    vals = torch.rand(pattern.nnz, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    dense = torch.zeros(7, 5, dtype=torch.float64).index_put((rows, cols), vals)
    torch.testing.assert_close(pattern.matmul(vals, x), dense @ x)
    torch.testing.assert_close(pattern.transpose_matmul(vals, y), dense.T @ y)
    torch.testing.assert_close(pattern.sddmm(y, x), (y[rows] * x[cols]).sum(1))
    torch.testing.assert_close(pattern.row_sum(vals), dense.sum(1))
    torch.testing.assert_close(pattern.col_sum(vals), dense.sum(0))
    torch.testing.assert_close(pattern.rows(), rows)
    assert torch.autograd.gradcheck(pattern.matmul, (vals, x))
    assert torch.autograd.gradcheck(pattern.transpose_matmul, (vals, y))
    assert torch.autograd.gradcheck(pattern.sddmm, (y, x))
    assert torch.autograd.gradcheck(pattern.col_sum, (vals,))


def test_pattern_transpose_permutation():
    pattern, rows, cols = _pattern_case()
    vals = torch.arange(pattern.nnz, dtype=torch.float64)
    t = pattern.csr_t(vals).to_dense()
    dense = torch.zeros(7, 5, dtype=torch.float64).index_put((rows, cols), vals)
    torch.testing.assert_close(t, dense.T)
    back = pattern.transpose()
    torch.testing.assert_close(back.csr(vals[pattern.t_perm]).to_dense(), dense.T)
    torch.testing.assert_close(back.csr_t(vals[pattern.t_perm]).to_dense(), dense)

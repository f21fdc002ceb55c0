r"""EASE^R: an item-item linear autoencoder with a closed-form solution.

Harald Steck. "Embarrassingly Shallow Autoencoders for Sparse Data." WWW 2019.

Method.  With X the binary ``U x I`` training matrix, EASE learns an item-item weight matrix B whose diagonal
is zero (an item may not predict itself) by ridge regression of X on itself:

.. math::
    \min_B \; \lVert X - X B \rVert_F^2 + \lambda \lVert B \rVert_F^2 \quad \text{s.t.} \quad
    \operatorname{diag}(B) = 0 .

The Lagrangian of the constraint gives the solution in closed form (the paper's equation 8):

.. math::
    P = (X^\top X + \lambda I)^{-1}, \qquad
    B_{ij} = \begin{cases} 0 & i = j \\ -P_{ij} / P_{jj} & i \ne j \end{cases}

and a user's scores are :math:`\hat y_u = X_u B`: every item j scored by the weights on it of the items in the
user's history (the training items, and the validation items when testing; see
:class:`~recsys.models.item_item.ItemSetQueries`).  The one hyper-parameter is :math:`\lambda` (``l2``),
chosen per data set on validation data.

Cost.  ``X^T X + lambda I`` is dense ``I x I`` and symmetric positive definite; it is inverted in place by
LAPACK (Cholesky, then the inverse from the factor: about ``I^3`` floating-point operations), in float32, so
one ``I x I`` float32 matrix is the peak memory (Gowalla's 40,981 items: 6.7 GB; Beauty's 12,101: 0.6 GB).
The condition number of ``X^T X + lambda I`` is at most ``1 + sigma_max(X)^2 / lambda``, so float32 keeps
several correct digits for the lambdas in use (tests compare with float64).  Scores are the sparse user rows
times the dense B, so evaluation costs ``nnz(X_users) x I`` per block of users.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from recsys.models.base import ModelConfig
from recsys.models.item_item import ItemItemRecommender

# Rows of X^T X formed per sparse product: bounds the sparse intermediate (a block's co-occurrence counts).
_GRAM_BLOCK = 2048


class EASEConfig(ModelConfig):
    """EASE^R hyper-parameters (Steck, WWW 2019)."""

    name: Literal["ease"] = "ease"
    """Registry key."""
    l2: float = Field(default=500.0, gt=0)
    """lambda, the L2 penalty on B (added to the diagonal of X^T X). No value suits every data set: choose it
    on a validation split (`recsys sweep --grid 'model.l2=[...]'`); docs/benchmarks.md has the choices."""


class EASE(ItemItemRecommender):
    """EASE^R item-item recommender (Steck, WWW 2019).

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`EASEConfig`.

    Fitted in :meth:`prepare` on the training split (:class:`~recsys.models.item_item.ItemItemRecommender`);
    :attr:`weights` is the dense ``I x I`` B (numpy float32, zero diagonal).  A user's query is her item set
    before the evaluated target (:class:`~recsys.models.item_item.ItemSetQueries`): ``I`` numbers, so no FAISS
    index serves this model (it would hold B once more and a dense row per user).  B is no parameter (the
    state dict is empty): a loaded run fits it again, to the same values.
    """

    config_cls = EASEConfig
    config: EASEConfig
    score_formula = "X_u @ B (dense item-item)"

    def fit_item_item(self, train: sp.csr_matrix) -> np.ndarray:
        return ease_weights(train, l2=self.config.l2)

    @property
    def weights(self) -> np.ndarray | None:
        """B, the dense ``I x I`` float32 item-item matrix (``None`` before :meth:`prepare`)."""
        return self.item_item

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, l2={self.config.l2:g}"


def ease_weights(train: sp.csr_matrix, *, l2: float) -> np.ndarray:
    """The EASE^R item-item matrix B (see the module docstring).

    Args:
        train: binary ``U x I`` CSR (float32 ones, no duplicates).
        l2: lambda > 0.
    Returns:
        ``I x I`` C-ordered float32 ndarray B with a zero diagonal; ``scores = X_u @ B``.
    Raises:
        MemoryError: naming the size of the dense ``I x I`` matrix when it cannot be allocated.
        ValueError: when LAPACK reports a failure (not expected for ``l2 > 0``: the matrix is positive
            definite).
    """
    n_items = train.shape[1]
    try:
        gram = np.empty((n_items, n_items), dtype=np.float32)
    except MemoryError as exc:
        raise MemoryError(
            f"EASE needs a dense {n_items:,} x {n_items:,} float32 matrix ({n_items**2 * 4 / 2**30:.1f} GiB) "
            "for its item-item weights, and it could not be allocated"
        ) from exc
    xt = train.T.tocsr()
    for start in range(0, n_items, _GRAM_BLOCK):
        stop = min(start + _GRAM_BLOCK, n_items)
        gram[start:stop] = (xt[start:stop] @ train).toarray()
    gram[np.diag_indices(n_items)] += np.float32(l2)

    # gram is symmetric, so its transpose is the same matrix in Fortran order, which LAPACK overwrites in
    # place: the Cholesky factor, then the inverse P from it, in the lower triangle of the Fortran view,
    # that is the upper triangle of the C-ordered `gram`.
    # One thread for the factorisation: OpenBLAS's threaded Cholesky (the build scipy wheels ship, 0.3.30)
    # crashes the process with a segmentation fault from about 30,000 items (Gowalla's 40,981; 20,000 runs);
    # see OpenMathLib/OpenBLAS issues 352 and 2821.  The inverse from the factor keeps every thread.
    with threadpool_limits(limits=1, user_api="blas"):
        factor, info = lapack.spotrf(gram.T, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        raise ValueError(f"EASE: Cholesky factorisation of X^T X + {l2:g} I failed (LAPACK info {info})")
    inverse, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise ValueError(f"EASE: inverting X^T X + {l2:g} I failed (LAPACK info {info})")
    if not np.shares_memory(inverse, gram):  # LAPACK copied (an unusual build): take its result
        gram[:] = inverse.T
    del factor, inverse

    p = gram  # upper triangle valid; mirror it into the lower one, a band of rows at a time
    for start in range(0, n_items, _GRAM_BLOCK):
        stop = min(start + _GRAM_BLOCK, n_items)
        p[start:stop, :start] = p[:start, start:stop].T
        band = p[start:stop, start:stop]
        band[:] = np.triu(band) + np.triu(band, 1).T
    diagonal = np.diag(p).copy()
    np.divide(p, -diagonal, out=p)  # B_ij = -P_ij / P_jj: column j divided by -P_jj
    p[np.diag_indices(n_items)] = 0.0
    return p

"""Most-popular: counts, ordering, inner-product form."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recsys.models import MostPopular, build_model


def test_popularity_orders_items_by_training_count():
    rows = np.array([0, 1, 2, 0, 1, 0, 2])
    cols = np.array([2, 2, 2, 0, 0, 3, 3])
    vals = np.array([1, 1, 1, 5, 1, 1, 1], dtype=np.float32)  # values ignored, duplicates counted once
    train = sp.coo_matrix((vals, (rows, cols)), shape=(3, 4))
    train = sp.vstack([train, sp.coo_matrix((np.ones(1), ([0], [3])), shape=(1, 4))])  # user 3 -> item 3
    model = build_model("popularity", 4, 4)
    assert isinstance(model, MostPopular) and not model.trainable
    model.prepare(train.tocsr())
    np.testing.assert_array_equal(model.counts.numpy(), [2, 0, 3, 3])
    scores = model.scorer()(torch.tensor([0, 3]))
    assert scores.shape == (2, 4)
    torch.testing.assert_close(scores, torch.tensor([[2.0, 0, 3, 3], [2.0, 0, 3, 3]]))
    order = torch.argsort(scores[0], descending=True, stable=True).tolist()
    assert order == [2, 3, 0, 1]
    assert model.query_embeddings(torch.tensor([1, 2, 3])).shape == (3, 1)
    assert model.item_embeddings().shape == (4, 1)
    # counts are part of the state (served without the training matrix)
    assert "counts" in model.state_dict()


def test_a_duplicated_pair_counts_once_and_an_explicit_zero_not_at_all():
    """A CSR built from arrays keeps a repeated (0, 1) entry and a stored 0 at (1, 2) until summed: the pair
    is one interaction, and the 0 is none."""
    train = sp.csr_matrix(
        (np.array([1.0, 1.0, 0.0], np.float32), np.array([1, 1, 2]), np.array([0, 2, 3])), shape=(2, 3)
    )
    model = build_model("popularity", 2, 3)
    model.prepare(train)
    np.testing.assert_array_equal(model.counts.numpy(), [0, 1, 0])

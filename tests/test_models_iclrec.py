"""ICLRec: the augmented views of the sampler, the representations, both contrastive terms by hand, and the
intents.

What it shares with every next-item model (queries, reloading, exact resume, learning a pattern) is tested in
test_models_sasrec.py (``SEQUENCE_MODELS``); the augmentations in test_sequence_augmentation.py."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from features.sequences import PAD, UserSequences
from recsys.contrastive import paired_info_nce
from recsys.models import REGISTRY, build_model
from recsys.models.iclrec import ICLRec, mean_over_items
from recsys.sequence_sampling import AugmentedPositionSampler, PositionSampler

N_ITEMS = 30
# training sequences of 12 users (user 3: one item, no example)
SEQS = [[(3 * u + k) % N_ITEMS for k in range(2 + u % 7)] for u in range(12)]
SEQS[3] = [4]
SEQS[0], SEQS[1] = [1, 2, 9], [5, 9]  # the same last training item: a false negative for the instance term
TINY = {"dim": 8, "ffn_dim": 16, "max_len": 5, "intents": 3, "dropout": 0.0, "attn_dropout": 0.0}


def model(**cfg) -> ICLRec:
    torch.manual_seed(0)
    m = build_model({"name": "iclrec", **TINY, **cfg}, len(SEQS), N_ITEMS)
    m.set_sequences(UserSequences.from_lists(SEQS))
    return m


def first_batch(m: ICLRec, batch_size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    class TC:
        pass

    TC.batch_size = batch_size
    return next(iter(m.make_sampler(TC, torch.Generator().manual_seed(seed))))


def test_registered_and_sampler_follows_the_terms():
    assert REGISTRY["iclrec"] is ICLRec
    m = model()
    batch = first_batch(m)
    assert {"view1", "view2", "inputs", "targets", "negatives", "users"} <= set(batch)
    plain = model(instance_loss=False, intent_loss=False)
    sampler = plain.make_sampler(type("TC", (), {"batch_size": 4}), torch.Generator())
    assert type(sampler) is PositionSampler  # sasrec_bce's: no views to draw


def test_views_are_augmentations_of_the_users_whole_input_cut_to_l():
    m = model(max_len=4)
    sampler = m.make_sampler(type("TC", (), {"batch_size": 3}), torch.Generator())
    assert isinstance(sampler, AugmentedPositionSampler)
    gen = torch.Generator().manual_seed(1)
    seen_crop = False
    for _ in range(20):
        for b in sampler.iterate(generator=gen):
            for row, u in enumerate(b["users"].tolist()):
                whole = SEQS[u][:-1]  # the input: the training sequence without its last item
                for key in ("view1", "view2"):
                    view = [i for i in b[key][row].tolist() if i != PAD]
                    # all padding only when a mask hid every item of the last L (the reference's views too)
                    assert view or len(whole) > 4
                    assert set(view) <= set(whole)
                    assert len(view) <= min(len(whole), 4)
                    seen_crop |= len(whole) > 4 and len(view) == 1 and view[0] not in whole[-4:]
    assert seen_crop  # a crop of a long input keeps one item of it, not of its last 4
    # replay: the batches from batch 2 on, views included, are those of the whole epoch
    full = list(sampler.iterate(generator=torch.Generator().manual_seed(7)))
    tail = list(sampler.iterate(start=2, generator=torch.Generator().manual_seed(7)))
    for a, b in zip(full[2:], tail, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_mean_over_items_ignores_padding():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    seqs = torch.tensor([[PAD, 5, 6], [1, PAD, 2]])
    out = mean_over_items(hidden, seqs)
    assert torch.allclose(out[0], hidden[0, 1:].mean(0)) and torch.allclose(out[1], hidden[1, [0, 2]].mean(0))


def test_both_terms_off_is_sasrec_bce():
    batch = first_batch(model())
    off = model(instance_loss=False, intent_loss=False)
    total, parts = off.loss(batch)
    torch.manual_seed(0)
    bce = build_model(
        {"name": "sasrec_bce", **{k: v for k, v in TINY.items() if k != "intents"}}, 12, N_ITEMS
    )
    assert torch.equal(total, bce.loss(batch)[0]) and set(parts) == {"bce"}


@pytest.mark.parametrize("representation", ["concatenate", "mean"])
@pytest.mark.parametrize("mask", [False, True])
def test_instance_term_by_hand(representation, mask):
    m = model(
        intent_loss=False, instance_representation=representation, false_negative_mask=mask,
        instance_weight=0.3, intent_weight=0.7, temperature=4.0,
    )  # fmt: skip
    batch = first_batch(m, batch_size=16)  # every user: users 0 and 1 in one batch
    total, parts = m.loss(batch)
    h1, h2 = m.encoder(batch["view1"]), m.encoder(batch["view2"])
    if representation == "concatenate":
        a, b = h1.reshape(len(h1), -1), h2.reshape(len(h2), -1)  # [B, L * d]
    else:
        real1, real2 = (batch[k] != PAD for k in ("view1", "view2"))
        a = torch.stack([h1[i][real1[i]].mean(0) for i in range(len(h1))])
        b = torch.stack([h2[i][real2[i]].mean(0) for i in range(len(h2))])
    # the example's last target; the reference labels it by the validation item (items[-2]), a held-out item
    labels = batch["targets"][:, -1] if mask else None
    expected = 0.3 * paired_info_nce(a, b, labels, 4.0)
    assert torch.allclose(parts["instance"], expected, atol=1e-6)
    assert torch.allclose(total, parts["bce"] + parts["instance"])
    assert not torch.allclose(expected, 0.3 * paired_info_nce(a, b, labels, 1.0))  # the temperature matters
    if mask:
        assert not torch.allclose(expected, 0.3 * paired_info_nce(a, b, None, 4.0))  # the mask matters here


@pytest.mark.parametrize("mask", [False, True])
def test_intent_term_by_hand(mask):
    m = model(instance_loss=False, false_negative_mask=mask, intent_weight=0.5, temperature=0.5)
    batch = first_batch(m)
    with pytest.raises(RuntimeError, match="no intents yet"):
        m.loss(batch)
    prototypes = torch.randn(3, 8)
    m.intent_prototypes.copy_(prototypes)
    m.prototype_epoch.fill_(0)
    total, parts = m.loss(batch)

    def rep(seqs):  # the mean hidden state over the real positions, one row at a time
        return torch.stack([m.encoder(s[None])[0][s != PAD].mean(0) for s in seqs])

    anchor = rep(batch["inputs"])
    intent = torch.cdist(anchor, prototypes).argmin(1)  # nearest in L2, from the un-augmented input
    positive = F.normalize(prototypes, dim=1)[intent]
    labels = intent if mask else None
    expected = (
        0.5 * 0.5 * sum(paired_info_nce(rep(batch[k]), positive, labels, 0.5) for k in ("view1", "view2"))
    )
    assert torch.allclose(parts["intent"], expected, atol=1e-5)
    assert torch.allclose(total, parts["bce"] + parts["intent"])


def test_shared_view_passes_reuse_the_instance_encodings():
    """With dropout, ``separate`` encodes the views again for the intent term (other dropout masks), ``shared``
    does not: both terms then see the same view encodings."""
    cfg = {"dropout": 0.5, "attn_dropout": 0.5}
    calls = {}
    for passes in ("separate", "shared"):
        m = model(view_passes=passes, **cfg)
        m.intent_prototypes.normal_()
        m.prototype_epoch.fill_(0)
        m.train()
        batch = first_batch(m)
        calls[passes] = 0

        def count(*_, key=passes):
            calls[key] += 1

        m.encoder.register_forward_hook(count)
        m.loss(batch)
    assert calls == {"separate": 5, "shared": 3}


def test_fit_intents_clusters_every_training_input_and_warm_starts():
    m = model()
    reps = m.encode_samples()
    users = [u for u, s in enumerate(SEQS) if len(s) >= 2]
    assert reps.shape == (len(users), 8)
    for row, u in enumerate(users):
        seq = SEQS[u][:-1][-5:]  # the input, last L items
        hidden = m.encoder(torch.tensor([seq]))[0]  # [L, d], left-padded
        assert torch.allclose(reps[row], hidden[-len(seq) :].mean(0), atol=1e-6)
    first = m.fit_intents(seed=1).clone()
    assert int(m.prototype_epoch) == 0 and first.abs().sum() > 0
    m.fit_intents(seed=2)
    assert int(m.prototype_epoch) == 1
    # saved with the weights: a reloaded model continues from the same clustering
    again = model()
    again.load_state_dict(m.state_dict())
    assert torch.equal(again.intent_prototypes, m.intent_prototypes) and again.has_prototypes
    with pytest.raises(ValueError, match="model.intents=20 must be smaller"):
        model(intents=20).fit_intents()


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="augmentations"):
        build_model({"name": "iclrec", "augmentations": ["crop", "insert"]}, 3, 5)
    with pytest.raises(ValueError, match="mask_ratio"):
        build_model({"name": "iclrec", "mask_ratio": 1.5}, 3, 5)
    with pytest.raises(ValueError, match="augmentations"):
        build_model({"name": "iclrec", "augmentations": []}, 3, 5)


def test_views_are_drawn_after_sasrec_bces_epoch_and_differ():
    """The permutation and the negatives come first, so the batches are ``sasrec_bce``'s for the same generator
    (with both weights 0 the model trains exactly as sasrec_bce); the two views are independent draws."""
    m = model(max_len=6)
    tc = type("TC", (), {"batch_size": 4})
    augmented = list(m.make_sampler(tc, torch.Generator().manual_seed(5)))
    bce = model(max_len=6, instance_loss=False, intent_loss=False)
    plain = list(bce.make_sampler(tc, torch.Generator().manual_seed(5)))
    for a, b in zip(augmented, plain, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)
    view1 = torch.cat([b["view1"] for b in augmented])
    view2 = torch.cat([b["view2"] for b in augmented])
    assert (view1 != view2).any(1).float().mean() > 0.5


def test_clustering_encodes_without_dropout_in_any_mode():
    m = model(dropout=0.5, attn_dropout=0.5)
    m.train()
    a, b = m.encode_samples(), m.encode_samples()
    assert torch.equal(a, b)
    m.eval()
    assert torch.allclose(a, m.encode_samples())


def test_kmeans_warm_starts_from_the_stored_prototypes_and_runs_iters_times_redo_lloyd_steps():
    reps = model().encode_samples()
    init = reps[[0, 4, 8]].clone()  # three distinct inputs as the previous epoch's centroids

    def refit(**cfg):
        m = model(**cfg)
        m.intent_prototypes.copy_(init)
        m.prototype_epoch.fill_(0)
        return m.fit_intents(seed=3).clone()

    def lloyd(c, steps):
        for _ in range(steps):
            assign = torch.cdist(reps, c).argmin(1)
            c = torch.stack([reps[assign == k].mean(0) for k in range(len(c))])
        return c

    one = refit(kmeans_iters=1, kmeans_redo=1)
    assert torch.allclose(one, lloyd(init, 1), atol=1e-5)  # warm-started: one step from the stored centroids
    three = lloyd(init, 3)
    assert not torch.allclose(three, lloyd(init, 1), atol=1e-4)  # (the data need more than one step)
    # the rounds continue from each other: 1 iteration x 3 rounds = 3 iterations x 1 round
    assert torch.allclose(refit(kmeans_iters=1, kmeans_redo=3), three, atol=1e-5)
    assert torch.allclose(refit(kmeans_iters=3, kmeans_redo=1), three, atol=1e-5)


def test_every_epoch_start_reclusters_from_the_current_model():
    from types import SimpleNamespace

    trainer = SimpleNamespace(cfg=SimpleNamespace(seed=3))
    m = model()
    m.on_epoch_start(trainer, 0)
    first = m.intent_prototypes.clone()
    assert int(m.prototype_epoch) == 0
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m.on_epoch_start(trainer, 1)
    assert int(m.prototype_epoch) == 1 and not torch.allclose(first, m.intent_prototypes)
    off = model(intent_loss=False)
    off.on_epoch_start(trainer, 0)
    assert not off.has_prototypes  # CL4SRec: no clustering


def test_intent_view_places_a_sequence_by_its_mean_and_recommends_by_its_last_position():
    from recsys.explain_sequence import IntentMembership, explain_sequence, require_sequence_intents

    m = model()
    m.eval()
    with pytest.raises(ValueError, match="never fitted"):
        explain_sequence(m, [3, 4])
    m.fit_intents(seed=1)
    samples = m.intent_samples  # one per user with >= 2 training items: the input, and the last item
    users = [u for u, s in enumerate(SEQS) if len(s) >= 2]
    assert samples.users.tolist() == users
    assert samples.input_lists() == [SEQS[u][:-1][-5:] for u in users]
    assert samples.targets.tolist() == [SEQS[u][-1] for u in users]
    members = IntentMembership.of(m)
    seq = [3, 4, 5]
    exp = explain_sequence(m, seq, membership=members, top_intents=2, examples=2, k=4)
    with torch.no_grad():
        hidden = m.encoder(torch.tensor([seq]))[0][-3:]  # the real positions
    rep = hidden.mean(0)
    distances = torch.linalg.vector_norm(m.intent_prototypes - rep, dim=1)
    assert exp.intents[0].intent == int(distances.argmin())
    assert exp.intents[0].distance == pytest.approx(float(distances.min()), rel=1e-5)
    for v in exp.intents:
        for t in v.typical_subsequences:
            u = users[t.sample]
            assert [x.item_idx for x in t.items] == SEQS[u][:-1][-5:] and t.target.item_idx == SEQS[u][-1]
    scores = m.item_embeddings() @ hidden[-1]  # recommendations: the query is the last position
    scores[seq] = -torch.inf
    assert [r.item_idx for r in exp.recommendations] == torch.topk(scores, 4).indices.tolist()
    off = model(intent_loss=False)
    with pytest.raises(ValueError, match="trained with model.intent_loss=false, which fits no intents"):
        explain_sequence(off, [3, 4])
    require_sequence_intents(off, fitted=False)  # fit_intents() may have fitted them

"""SessionEncoder / SessionAwareRanker / ModelBundle: padding invariance, causality, scoring, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reco.artifacts.bundle import PAD, BundleError, ModelBundle
from reco.data.catalog import ItemCatalog
from reco.models.ranker import RankerConfig, SessionAwareRanker, right_align

N_ITEMS = 30


def _model(seed: int = 0, **kw) -> SessionAwareRanker:
    torch.manual_seed(seed)
    model = SessionAwareRanker(RankerConfig(n_items=N_ITEMS + 1, n_categories=4, item_dim=16, hidden=24, **kw))
    model.item_category.copy_(torch.arange(N_ITEMS + 1) % 4)
    model.item_pop.copy_(torch.arange(N_ITEMS + 1) % 5)
    return model.eval()


def _bundle(seed: int = 0) -> ModelBundle:
    ids = [PAD] + [f"i{k}" for k in range(1, N_ITEMS + 1)]
    catalog = ItemCatalog.from_records([{"item_id": i, "title": i.upper(), "genres": ["Drama"]} for i in ids[1:]])
    return ModelBundle(_model(seed), ids, catalog, {"version": "t1", "categories": ["Drama"]})


def test_padding_never_changes_the_encoder_output():
    model = _model()
    session = torch.tensor([5, 9, 2, 17])
    outs, attns = [], []
    for width in (4, 7, 50):
        padded = torch.zeros(1, width, dtype=torch.long)
        padded[0, :4] = session
        with torch.no_grad():
            q, a = model.encode(padded)
        outs.append(q[0])
        attns.append(a[0])
        assert torch.all(a[0, 4:] == 0)  # padded positions get no attention
    for q, a in zip(outs[1:], attns[1:], strict=True):
        assert torch.allclose(q, outs[0], atol=1e-6)
        assert torch.allclose(a[:4], attns[0][:4], atol=1e-6)
    # the same session next to a longer one in a batch: still identical
    batch = torch.tensor([[5, 9, 2, 17, 0, 0], [1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        q, _ = model.encode(batch)
    assert torch.allclose(q[0], outs[0], atol=1e-6)


def test_left_padding_is_converted_by_right_align():
    model = _model()
    with torch.no_grad():
        right, _ = model.encode(torch.tensor([[5, 9, 2, 0, 0]]))
        left, _ = model.encode(right_align(torch.tensor([[0, 0, 5, 9, 2]])))
    assert torch.allclose(right, left, atol=1e-6)


def test_all_prefixes_is_causal_and_matches_the_single_session_encoding():
    model = _model()
    seq = torch.tensor([[3, 8, 1, 22, 14, 0, 0]])
    with torch.no_grad():
        emb = model.item_emb(seq)
        every = model.encoder.all_prefixes(emb, seq > 0)
        for t in range(5):
            state, _ = model.encoder(emb[:, : t + 1], seq[:, : t + 1] > 0)
            assert torch.allclose(every[0, t], state[0], atol=1e-5)
        # changing a later item leaves earlier prefixes untouched (no future leak)
        seq2 = seq.clone()
        seq2[0, 4] = 29
        every2 = model.encoder.all_prefixes(model.item_emb(seq2), seq2 > 0)
    assert torch.allclose(every[0, :4], every2[0, :4], atol=1e-6)
    assert not torch.allclose(every[0, 4], every2[0, 4])


def test_forward_returns_logits_and_the_mlp_is_in_the_loop():
    model = _model()
    session = torch.tensor([[1, 2, 3, 0]])
    cands = torch.tensor([[1, 4, 5, 6]])
    ctx = torch.tensor([1]), torch.tensor([1])
    with torch.no_grad():
        logits, attn = model(session, cands, *ctx)
        query, _ = model.encode(session)
        dot = (model.item_emb(cands) * query[:, None]).sum(-1)
    assert logits.shape == (1, 4) and attn.shape == (1, 4)
    assert torch.isclose(attn.sum(), torch.tensor(1.0))
    assert not torch.allclose(logits, dot)  # the MLP adds its correction to the retrieval score


def test_bundle_score_aligns_attention_with_the_session_and_matches_score_batch():
    bundle = _bundle()
    session = ["i1", "nope", "i7", "i3"]
    cands = ["i2", "i5", "i9", "unknown-item"]
    res = bundle.score(session, cands, page_type="product", device="mobile")
    assert res.scores.shape == (4,) and res.attention.shape == (4,)
    assert res.attention[1] == 0.0  # an unknown session item gets no attention
    assert np.isclose(res.attention.sum(), 1.0, atol=1e-5)
    batch, attn = bundle.score_batch([session, ["i4"]], cands, page_type="product", device="mobile")
    np.testing.assert_allclose(batch[0], res.scores, atol=1e-5)
    np.testing.assert_allclose(attn[0], res.attention, atol=1e-6)
    per_session, _ = bundle.score_batch([session, ["i4"]], [cands, cands[::-1]], page_type="product", device="mobile")
    np.testing.assert_allclose(per_session[0], res.scores, atol=1e-5)
    np.testing.assert_allclose(per_session[1], batch[1][::-1], atol=1e-5)


def test_bundle_uses_the_last_max_session_len_items():
    bundle = _bundle()
    long_session = [f"i{1 + k % N_ITEMS}" for k in range(80)]
    res = bundle.score(long_session, ["i1", "i2"])
    assert res.attention.shape == (50,)
    np.testing.assert_allclose(res.scores, bundle.score(long_session[-50:], ["i1", "i2"]).scores, atol=1e-6)


def _trained_like(bundle: ModelBundle) -> ModelBundle:
    """Random weights everywhere (biases too), as training leaves them, so that every term counts."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in bundle.model.named_parameters():
            if name != "item_emb.weight":
                p.normal_(0, 0.3)
    return bundle


def test_frozen_scorer_remembers_a_session_until_it_changes():
    """A session scored again (another page, a refresh) reuses its encoding; the scores are the same."""
    bundle = _trained_like(ModelBundle(_model(), _bundle().item_ids, _bundle().catalog, {}))
    scorer, cands = bundle.frozen_scorer(), bundle.index_of(["i2", "i5", "i9"])
    session = bundle.index_of(["i1", "i7", "i3"])
    first = scorer.score(session, cands, "home", "mobile")
    again = scorer.score(session, cands, "product", "mobile")  # same session, other page: one encoding
    assert scorer.memo_counts == {"hit": 1, "extended": 0, "encoded": 1}
    np.testing.assert_array_equal(first.attention, again.attention)
    want = bundle.score(["i1", "i7", "i3"], ["i2", "i5", "i9"], page_type="product", device="mobile")
    np.testing.assert_allclose(again.scores, want.scores, atol=1e-5)
    enc = scorer._memo.get(session.tobytes())
    with pytest.raises(ValueError, match="read-only"):  # what every later request shares cannot be changed
        enc.query[0] = 1.0


def test_frozen_scorer_memo_is_bounded_and_forgets_the_least_recently_used():
    from reco.models.scorer import _Memo

    bundle = _bundle()
    scorer, cands = bundle.frozen_scorer(), bundle.index_of(["i2", "i5"])
    scorer._memo = _Memo(2)
    a, b, c = (bundle.index_of(s) for s in (["i1", "i3"], ["i4", "i6"], ["i7", "i8"]))
    for session in (a, b, a, c, a, b):  # c evicts b (a was used after b); then b is encoded again
        scorer.score(session, cands, "home", "mobile")
    assert scorer.memo_counts == {"hit": 2, "extended": 0, "encoded": 4}
    assert len(scorer._memo._items) == 2


@pytest.mark.parametrize(
    ("arch", "counts"),
    [
        ({}, {"hit": 1, "extended": 8, "encoded": 1}),
        ({"gru_layers": 1, "mlp_dims": (32,)}, {"hit": 1, "extended": 8, "encoded": 1}),
        # Window of 5: from the 6th item on the window slides and drops its first known item, so there is
        # no remembered prefix to extend; except when what slides out is the unknown item (the 10th).
        ({"gru_layers": 3, "mlp_dims": (32, 16, 8), "max_session_len": 5}, {"hit": 1, "extended": 4, "encoded": 5}),
    ],
    ids=["default", "1-layer", "3-layer-window-5"],
)
def test_frozen_scorer_extends_a_remembered_session_by_one_item_as_if_encoded_in_full(arch, counts):
    """A view, then the next page: the session grows by one item per request. Each request extends the
    remembered encoding by one step per layer (until the window slides); the scores and the attention are
    those of the full encoding (and of the module)."""
    bundle = _trained_like(ModelBundle(_model(**arch), _bundle().item_ids, _bundle().catalog, {}))
    scorer, full = bundle.frozen_scorer(), bundle.frozen_scorer()
    items = [f"i{1 + (7 * k) % N_ITEMS}" for k in range(9)]
    items.insert(4, "unknown")  # an unknown item is not read by the encoder: the known prefix still extends
    cands = ["i2", "i3", "i5", "i9", "i30"]
    for n in range(1, len(items) + 1):
        session, rows = items[:n], bundle.index_of(items[:n])
        got = scorer.score(rows, bundle.index_of(cands), "cart", "tablet")
        fresh = full.score(rows, bundle.index_of(cands), "cart", "tablet")
        full._memo = type(full._memo)(full.MEMO)  # `full` always encodes from scratch
        np.testing.assert_allclose(got.scores, fresh.scores, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(got.attention, fresh.attention, atol=1e-6)
        want = bundle.score(session, cands, page_type="cart", device="tablet")
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5, rtol=1e-5)
    # The unknown item asks for the same known rows again (a hit); every other request adds one known item.
    assert scorer.memo_counts == counts


def test_index_of_maps_unknown_ids_to_padding():
    bundle = _bundle()
    assert bundle.index_of(["i3", "zzz", PAD]).tolist() == [3, 0, 0]
    assert bundle.item_embeddings().shape == (N_ITEMS + 1, 16)
    assert np.all(bundle.item_embeddings()[0] == 0)


def test_bundle_save_load_round_trip(tmp_path):
    bundle = _bundle()
    bundle.save(tmp_path / "m")
    loaded = ModelBundle.load(tmp_path / "m")
    assert loaded.item_ids == bundle.item_ids
    assert loaded.meta == bundle.meta
    assert loaded.catalog.title("i4") == "I4"
    a = bundle.score(["i1", "i2"], ["i3", "i4"]).scores
    np.testing.assert_allclose(loaded.score(["i1", "i2"], ["i3", "i4"]).scores, a, atol=1e-6)
    torch.load(tmp_path / "m" / "weights.pt", weights_only=True)  # plain state_dict: safe loading works


def test_bundle_load_errors_name_the_file(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        ModelBundle.load(tmp_path / "absent")
    _bundle().save(tmp_path / "m")
    (tmp_path / "m" / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(BundleError, match=r"weights\.pt"):
        ModelBundle.load(tmp_path / "m")
    (tmp_path / "m" / "items.json").unlink()
    with pytest.raises(BundleError, match=r"lacks items\.json"):
        ModelBundle.load(tmp_path / "m")


def test_bundle_rejects_a_vocabulary_that_does_not_fit_the_model():
    bundle = _bundle()
    with pytest.raises(BundleError, match="item ids"):
        ModelBundle(bundle.model, bundle.item_ids[:-1], bundle.catalog, {})


def test_config_from_json_lists_equals_config_from_tuples():
    """A JSON list and a tuple mean the same architecture (warm starts compare them)."""
    from reco.models.ranker import RankerConfig

    a = RankerConfig(n_items=10, n_categories=3, mlp_dims=[16, 8])
    b = RankerConfig(n_items=12, n_categories=4, mlp_dims=(16, 8))
    assert a.mlp_dims == (16, 8) and a.architecture() == b.architecture()
    assert RankerConfig.from_dict(a.to_dict()) == a

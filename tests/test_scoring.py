"""One scoring function: `SessionAwareRanker.forward` is the definition; serving's `FrozenScorer`, the bundle
(evaluation), the online learner's `from_bundle`, the simulator and training all compute it, with the one
`seen` function. Held equal here on every architecture `RankerConfig` allows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reco.artifacts.bundle import PAD, ModelBundle
from reco.data.catalog import ItemCatalog
from reco.models.ranker import RankerConfig, SessionAwareRanker, seen
from reco.models.scorer import FrozenScorer
from reco.offline.evaluation import evaluate_bundle

N_ITEMS = 30
IDS = [PAD] + [f"i{k}" for k in range(1, N_ITEMS + 1)]
CATALOG = ItemCatalog.from_records([{"item_id": i, "genres": ["Drama"]} for i in IDS[1:]])

# Every field RankerConfig varies (dimensions, depth, window, context vocabularies), at small sizes.
ARCHITECTURES = {
    "default": {},
    "1-layer-1-mlp": {"gru_layers": 1, "mlp_dims": (32,)},
    "3-layer-window-5": {"gru_layers": 3, "mlp_dims": (32, 16, 8), "max_session_len": 5},
    "window-1": {"max_session_len": 1},
    "odd-widths": {"item_dim": 8, "hidden": 12, "attn_dim": 4, "category_dim": 3, "n_pop_buckets": 3,
                   "pop_dim": 2, "context_dim": 5, "mlp_dims": (7, 5, 3)},
    "own-context-vocabularies": {"page_types": ("home", "search"), "devices": ("tv",)},
    "dropouts": {"dropout": 0.5, "mlp_dropout": 0.3, "gru_dropout": 0.4, "gru_layers": 2},
}  # fmt: skip
SESSIONS = {
    "short": ["i1", "i7", "i3"],
    "cold": [],
    "with-unknown": ["i4", "unknown", "i2"],
    "sliding-window": [f"i{1 + k % N_ITEMS}" if k % 7 else "unknown" for k in range(80)],
}
CANDIDATES = ["i2", "i3", "i5", "i9", "i30", "i1"]  # some are in the sessions: "seen" matters
CONTEXTS = [("cart", "tablet"), ("search", "tv"), ("nowhere", "fridge")]  # known, own vocabularies, unknown


def _model(seed: int = 0, **arch) -> SessionAwareRanker:
    """Random weights everywhere (biases too), as training leaves them, so that every term counts."""
    base = {"item_dim": 16, "hidden": 24}
    torch.manual_seed(seed)
    model = SessionAwareRanker(RankerConfig(n_items=N_ITEMS + 1, n_categories=4, **{**base, **arch}))
    model.item_category.copy_(torch.arange(N_ITEMS + 1) % 4)
    model.item_pop.copy_(torch.arange(N_ITEMS + 1) % model.config.n_pop_buckets)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "item_emb.weight":
                p.normal_(0, 0.3)
    return model.eval()


def _forward(model: SessionAwareRanker, session: list[str], cands: list[str], page: str, dev: str) -> np.ndarray:
    """The definition, called as its docstring says: the encoder reads the known rows among the last
    max_session_len items; the whole session is the history for "seen"."""
    bundle = ModelBundle(model, IDS, CATALOG, {})
    rows = bundle.index_of(session)
    tail = rows[-model.config.max_session_len :]
    encoder_in = tail[tail > 0] if (tail > 0).any() else np.zeros(1, np.int64)
    p, d = model.context_index(page, dev)
    with torch.inference_mode():
        logits, _ = model(torch.from_numpy(encoder_in)[None], torch.from_numpy(bundle.index_of(cands))[None],
                          torch.tensor([p]), torch.tensor([d]), history=torch.from_numpy(rows)[None])  # fmt: skip
    return logits[0].numpy()


@pytest.mark.parametrize("arch", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
@pytest.mark.parametrize("session", SESSIONS.values(), ids=SESSIONS.keys())
def test_frozen_scorer_and_the_bundle_equal_the_forward(arch, session):
    model = _model(**arch)
    bundle = ModelBundle(model, IDS, CATALOG, {})
    scorer = bundle.frozen_scorer()
    for page, dev in CONTEXTS:
        want = _forward(model, session, CANDIDATES, page, dev)
        got = scorer.score(bundle.index_of(session), bundle.index_of(CANDIDATES), page, dev)
        np.testing.assert_allclose(got.scores, want, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(bundle.score(session, CANDIDATES, page, dev).scores, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("session", SESSIONS.values(), ids=SESSIONS.keys())
def test_the_session_query_is_the_forwards_query(session):
    model = _model(2, max_session_len=5)
    bundle = ModelBundle(model, IDS, CATALOG, {})
    got = bundle.frozen_scorer().session_query(bundle.index_of(session))
    np.testing.assert_allclose(got, bundle.session_embedding(session), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
def test_a_growing_session_is_scored_as_the_forward_at_every_length(arch):
    """The scorer's remembered / one-step-extended encodings, through a window that slides."""
    model = _model(**arch)
    bundle = ModelBundle(model, IDS, CATALOG, {})
    scorer = bundle.frozen_scorer()
    items = [f"i{1 + (7 * k) % N_ITEMS}" for k in range(12)]
    items.insert(4, "unknown")
    for n in range(len(items) + 1):
        got = scorer.score(bundle.index_of(items[:n]), bundle.index_of(CANDIDATES), "cart", "tablet")
        np.testing.assert_allclose(got.scores, _forward(model, items[:n], CANDIDATES, "cart", "tablet"), atol=1e-5)


def _per_layer_loop(model: SessionAwareRanker, rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The reference: torch's GRU one layer after the other, one item at a time, in plain float64 numpy, then
    the attention and query -> (each layer's last state, attention, query)."""
    p = {k: v.detach().numpy().astype(np.float64) for k, v in model.named_parameters()}
    x, last, sig = p["item_emb.weight"][rows], [], lambda a: 1 / (1 + np.exp(-a))
    for k in range(model.config.gru_layers):
        w_ih, w_hh, b_ih, b_hh = (p[f"encoder.gru.{w}_l{k}"] for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        hidden = len(b_hh) // 3
        h, seq = np.zeros(hidden), []
        for xt in x:
            gi, gh = np.split(w_ih @ xt + b_ih, 3), np.split(w_hh @ h + b_hh, 3)
            r, z = sig(gi[0] + gh[0]), sig(gi[1] + gh[1])
            n = np.tanh(gi[2] + r * gh[2])
            h = n + z * (h - n)
            seq.append(h)
        x = np.array(seq)
        last.append(h)
    w1, b1, v = p["encoder.attention.0.weight"], p["encoder.attention.0.bias"], p["encoder.attention.2.weight"][0]
    a = np.exp(np.tanh(x @ w1.T + b1) @ v)
    a /= a.sum()
    return last, a, np.concatenate([a @ x, x[-1]]) @ p["to_query.weight"].T + p["to_query.bias"]


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_the_encoding_equals_the_per_layer_loop_on_every_memo_path(layers):
    """Encoded in full (lengths 1, 2, 7, 50), extended by one item from the remembered prefix, remembered."""
    model = _model(4, gru_layers=layers)
    rows = np.random.default_rng(layers).integers(1, N_ITEMS + 1, 50)
    growing = FrozenScorer(model)
    for n in range(1, len(rows) + 1):
        want = _per_layer_loop(model, rows[:n])
        paths = [growing._encoded(rows[:n]), growing._encoded(rows[:n])]  # encoded (n = 1) / extended, hit
        paths += [FrozenScorer(model)._encoded(rows[:n])] if n in (1, 2, 7, 50) else []  # encoded
        for enc in paths:
            for got, ref in zip([*enc.last, enc.attention, enc.query], [*want[0], *want[1:]], strict=True):
                np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert growing.memo_counts == {"hit": 50, "extended": 49, "encoded": 1}


def test_score_batch_shared_and_per_session_candidates_equal_the_forward():
    model = _model(3)
    bundle = ModelBundle(model, IDS, CATALOG, {})
    sessions = list(SESSIONS.values())
    shared, _ = bundle.score_batch(sessions, CANDIDATES, "home", "mobile")
    per, _ = bundle.score_batch(sessions, [CANDIDATES[::-1]] * len(sessions), "home", "mobile")
    for b, s in enumerate(sessions):
        want = _forward(model, s, CANDIDATES, "home", "mobile")
        np.testing.assert_allclose(shared[b], want, atol=1e-5)
        np.testing.assert_allclose(per[b][::-1], want, atol=1e-5)


def test_seen_is_membership_in_the_history_on_torch_and_numpy():
    rng = np.random.default_rng(0)
    cands, hist = rng.integers(0, 12, (50, 7)), rng.integers(0, 12, (50, 9))
    brute = np.array([[c > 0 and c in set(h) for c in row] for row, h in zip(cands, hist, strict=True)])
    assert np.array_equal(seen(torch.from_numpy(cands), torch.from_numpy(hist), 12).numpy(), brute)
    for row, h, want in zip(cands, hist, brute, strict=True):
        assert np.array_equal(seen(row, h, 12), want)


def test_the_seen_flag_moves_only_history_items():
    """Flag off (empty history) changes the scores of the history's items only, so with history excluded
    from the ranking the metrics are the same, flag on or off."""
    model = _model(5)
    bundle = ModelBundle(model, IDS, CATALOG, {})
    session = ["i1", "i7", "i3"]
    on = bundle.score_batch([session], IDS[1:])[0][0]
    off = bundle.score_batch([session], IDS[1:], seen=False)[0][0]
    moved = {IDS[1 + k] for k in np.flatnonzero(~np.isclose(on, off, atol=1e-6))}
    assert moved == set(session)
    sessions = [["i1", "i2", "i3"], ["i4", "i9"], ["i11", "i12", "i13", "i14"]] * 3
    targets = ["i5", "i10", "i15"] * 3
    flag_on = evaluate_bundle(bundle, sessions, targets)
    flag_off = evaluate_bundle(bundle, sessions, targets, seen=False)
    assert flag_on["exclude_history"] == flag_off["exclude_history"]


def test_the_online_learner_and_the_simulator_score_with_the_forward():
    from reco.online.examples import Examples
    from reco.online.model import from_bundle, logits_numpy
    from reco.sim.inprocess import InProcessApi

    model = _model(7)
    bundle = ModelBundle(model, IDS, CATALOG, {"version": "v1"})
    arm = from_bundle(bundle)
    session = ["i1", "i7", "i3"]
    rows = bundle.index_of(session)
    page, dev = model.context_index("product", "desktop")
    want = _forward(model, session, CANDIDATES, "product", "desktop")
    ex = Examples.zeros(len(CANDIDATES), 8)
    ex.session[:, : len(rows)] = rows
    ex.lengths[:], ex.items[:], ex.page[:], ex.device[:] = len(rows), bundle.index_of(CANDIDATES), page, dev
    np.testing.assert_allclose(logits_numpy(arm, ex), want, atol=1e-5)
    api = InProcessApi(None, {"a": arm}, lambda u: "a", CANDIDATES)
    got = api._score(api._models["a"], rows.tolist(), bundle.index_of(CANDIDATES).tolist(), page, dev)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_training_marks_seen_exactly_the_items_earlier_in_the_users_history():
    import pandas as pd

    from reco.offline.trainer import _seen, build_examples

    rng = np.random.default_rng(1)
    rows = [(f"u{u}", f"i{rng.integers(1, 9)}", t) for u in range(6) for t in range(int(rng.integers(5, 30)))]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])  # repeats: users re-view items here
    ev["ts"] = pd.to_datetime(ev["ts"], unit="s", utc=True)
    ex = build_examples(ev, IDS, max_session_len=6, window_stride=3)
    columns = {"w": ex.windows, "t": ex.targets, "u": ex.user, "o": ex.offset}
    batch = {k: torch.from_numpy(v) for k, v in columns.items()}
    sel = batch["t"] > 0
    cands = torch.from_numpy(rng.integers(0, 10, (int(sel.sum()), 5)))
    got = _seen(batch, sel, cands, ex, N_ITEMS + 1).numpy()
    positions = (batch["o"][:, None] + torch.arange(sel.size(1)))[sel].tolist()
    users = batch["u"][:, None].expand_as(sel)[sel].tolist()
    for m, (u, pos) in enumerate(zip(users, positions, strict=True)):
        before = set(ex.sequences[u][: pos + 1].tolist())
        assert got[m].tolist() == [c > 0 and c in before for c in cands[m].tolist()]


def test_a_served_item_costs_the_scorer_one_row_of_its_item_table():
    # Memory per item is what bounds a worker at a million items: one row of [embedding | 1 | seen | MLP item
    # part] (d + 2 + m floats), no per-item table more (the GRU's input projection, 3H floats an item, was one).
    def table_bytes(n_items: int) -> int:
        torch.manual_seed(0)
        scorer = FrozenScorer(SessionAwareRanker(RankerConfig(n_items=n_items, n_categories=4)))
        arrays = [a for a in vars(scorer).values() if isinstance(a, np.ndarray)]
        arrays += [a for layer in scorer._layers for a in vars(layer).values()]
        arrays += [a for pair in scorer._mlp for a in pair] + list(scorer._item_weights)
        return sum(a.nbytes for a in arrays)

    c = RankerConfig(n_items=1, n_categories=4)
    assert (table_bytes(2001) - table_bytes(1001)) / 1000 == (c.item_dim + 2 + c.mlp_dims[0]) * 4

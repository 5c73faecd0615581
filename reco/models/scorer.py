"""`FrozenScorer`: serving's scorer, `SessionAwareRanker`'s forward for one session in numpy.

A served model's weights never change (a new version or online snapshot is a new model object), so
everything that depends on items only is computed once, when the model is loaded:

- the item-only part of the MLP's first layer, `mlp_item([item_emb, cat_emb, pop_emb])` (n_items, m);
- the page and device contributions to the MLP's first layer (one row per page type / device).

Not the GRU's first-layer input projection of every item (`item_emb @ W_ih + b_ih`, (n_items, 3H)): at 3H = 384
floats an item it was the largest table (1.5 GB at a million items, a third of an API worker's memory, copied
again by every catalogue update), and a request needs it for its new session rows only, one product of
their table rows: +1.6 us for a browsing session's one new item, +9 us for a new session's 20.

What is left per request is the recurrence over the session (remembered, or one step of it, for a
session seen before: `FrozenScorer`), the attention and a few (500, 64) products. numpy on one thread
does this in about half the time of the module's forward, whose cost at this size is mostly
per-operator dispatch (measured in docs/benchmarks.md, "Serving"). The
maths is the module's, term by term, and "already seen" is the ranker's own `seen` function; tests hold the
scores equal to `SessionAwareRanker.forward` (1e-5) on every architecture `RankerConfig` allows, so the
offline evaluation (which scores through the forward) measures the served ranking.

API (stable; serving, retrieval and cold-start code call only this): `FrozenScorer(model)`,
`score(session_rows, candidate_rows, page_type, device) -> ScoreResult`, `session_query(session_rows)`
(the session's query vector), `retrieval_scores(session_rows, pool_rows, page_type, device)` (`score`'s
logits for a retrieval pool, remembered for `score` to gather) and `item_embeddings()` (a read-only view), rows as
in `ModelBundle.index_of`.
"""

from __future__ import annotations

import copy
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
from scipy.special import expit


@dataclass
class ScoreResult:
    scores: np.ndarray  # (n_candidates,) logits, higher = better
    attention: np.ndarray  # (len(session used),) aligned with the last max_session_len session items given


@dataclass(frozen=True)
class _GruLayer:
    """One layer of torch's GRU, arranged for the per-step loop: the r and z gates' hidden bias is
    folded into the input projection (`b_in`); the n gate's (which r multiplies) is the last row of
    `w_hh`, which the loop multiplies by the state followed by a constant 1."""

    w_ih_t: np.ndarray  # (in, 3H); layer 0 projects through `FrozenScorer._in0` (this with the bias as a row)
    b_in: np.ndarray  # (3H,): b_ih + [b_hr, b_hz, 0]
    w_hh: np.ndarray  # (H + 1, 3H): [W_hh^T; 0, 0, b_hn]

    @classmethod
    def of(cls, gru: Any, k: int) -> _GruLayer:
        b_ih, b_hh = _np(getattr(gru, f"bias_ih_l{k}")), _np(getattr(gru, f"bias_hh_l{k}"))
        hidden = len(b_hh) // 3
        b_in = b_ih + np.concatenate([b_hh[: 2 * hidden], np.zeros(hidden, dtype=np.float32)])
        w_ih_t, w_hh_t = (_np(getattr(gru, f"weight_{w}_l{k}")).T.copy() for w in ("ih", "hh"))
        b_n = np.concatenate([np.zeros(2 * hidden, dtype=np.float32), b_hh[2 * hidden :]])
        return cls(w_ih_t, b_in, np.vstack([w_hh_t, b_n]))

    def run(self, gi: np.ndarray, h0: np.ndarray | None = None) -> np.ndarray:
        """Input projections (L, 3H) (bias `b_in` included) -> hidden states (L, H), from h0 (default 0);
        a view of rows H + 1 apart."""
        hidden = self.w_hh.shape[1] // 3
        gi_rz, gi_n = gi[:, : 2 * hidden].copy(), gi[:, 2 * hidden :].copy()  # contiguous rows per step
        w_hh = self.w_hh
        out = np.empty((len(gi) + 1, hidden + 1), dtype=np.float32)  # row t + 1: [h after step t, 1]
        out[:, hidden] = 1.0
        hs = out[:, :hidden]
        hs[0] = 0.0 if h0 is None else h0
        # At H = 128 a step is nine tiny numpy calls, and their per-call overhead is about half of it: the
        # buffers are preallocated, the ufuncs in place, the n gate's hidden bias comes out of the product
        # (the constant 1) and `np.dot` dispatches faster than `np.matmul` (`_encode_all`, 2 layers: 20 items
        # 0.54 -> 0.50 ms, 50 items 1.27 -> 1.15 ms). Advancing all layers in one set of calls per step
        # (layer l at item s - l, a "wavefront") took 1.2-1.4x the time of the per-layer loop: an upper
        # layer's input product is then one (H, 3H) vector product per item instead of one batched product
        # per layer, and these products (~3 us each) already cost about as much as the calls saved.
        gh, rz = np.empty(3 * hidden, dtype=np.float32), np.empty(2 * hidden, dtype=np.float32)
        gh_rz, n, r, z = gh[: 2 * hidden], gh[2 * hidden :], rz[:hidden], rz[hidden:]
        for x, h, h_new, g_rz, g_n in zip(out, hs, hs[1:], gi_rz, gi_n, strict=False):
            np.dot(x, w_hh, out=gh)  # torch's gates: r, z, n; h' = n + z * (h - n)
            np.add(g_rz, gh_rz, out=rz)
            expit(rz, out=rz)
            n *= r  # r * (W_hn h + b_hn)
            n += g_n
            np.tanh(n, out=n)
            np.subtract(h, n, out=h_new)
            h_new *= z
            h_new += n
        return hs[1:]


class _Encoding(NamedTuple):
    """A session's encoding, and what extending the session by one item needs (arrays read-only: shared)."""

    query: np.ndarray  # (d,)
    attention: np.ndarray  # (L,) float32
    last: tuple[np.ndarray, ...]  # each GRU layer's hidden state after the last item, (H,) each
    logits: np.ndarray  # (L,) attention logits e
    top: float  # max(e)
    weight_sum: float  # sum(exp(e - top))
    weighted: np.ndarray  # (H,) sum(exp(e - top) * h_top): the attention numerator (an online softmax)


class _Memo:
    """A thread-safe LRU keyed by bytes (a session's item rows): session encodings, retrieval pools."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Any:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: bytes, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            if len(self._items) > self.size:
                self._items.popitem(last=False)


def _grown(table: np.ndarray, n: int, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A copy of `table` with `n` rows (new rows zero), `values` written at `rows`."""
    out = np.zeros((n, table.shape[1]), dtype=table.dtype)
    out[: len(table)] = table
    out[rows] = values
    return out


def _item_rows(item_part: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """`FrozenScorer`'s item table rows (n, d + 2 + m): [embedding | 1 | 0 (the seen flag's place) | item part]."""
    out = np.zeros((len(emb), emb.shape[1] + 2 + item_part.shape[1]), dtype=np.float32)
    out[:, : emb.shape[1]], out[:, emb.shape[1]], out[:, emb.shape[1] + 2 :] = emb, 1.0, item_part
    return out


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32, copy=True)


class FrozenScorer:
    """Scores candidates for one session from precomputed tables (see the module docstring).

    `model` is a `SessionAwareRanker`; its weights are copied here (only `context_index` is called later).

    `score` remembers the encodings of the last `MEMO` sessions (keyed by their item rows); the recurrence
    is the costliest per-request step (docs/benchmarks.md, "Serving"):

    - a session scored again (another page, a carousel, a refresh) reuses its encoding;
    - a session that gained one item since it was last scored (the common case: a view, then the next
      page) costs one GRU step per layer from the remembered states, with the attention updated as an
      online softmax (running max, sum and weighted sum), instead of the whole recurrence. The GRU is
      causal and starts from 0 at the first item, so this is the same computation (equal within float
      rounding; tests hold it to the full encoding). A window that slid (a session longer than
      `max_session_len`) has no remembered prefix and is encoded in full.

    `memo_counts` counts the three outcomes ("hit", "extended", "encoded"). The weights never change, so
    neither do the answers.
    """

    #: Session encodings remembered per model (~2 KB each at the default sizes).
    MEMO = 4096
    #: Retrieval pools remembered (`retrieval_scores`): ~24 KB each at the default pool of 2,000, ~6 MB in all.
    POOLS = 256

    def __init__(self, model: Any) -> None:
        import torch

        from reco.models.ranker import seen

        c = model.config
        self.config = c
        gru = model.encoder.gru
        with torch.inference_mode():
            emb = model.item_emb.weight
            self._layers = [_GruLayer.of(gru, k) for k in range(c.gru_layers)]
            # The first layer's input projection with its bias as a last row: [embedding | 1] @ it, the item
            # table's first d + 1 columns (`_projected`).
            self._in0 = np.vstack([self._layers[0].w_ih_t, self._layers[0].b_in[None]])  # (d + 1, 3H)
            item_part = _np(model.item_features(torch.arange(c.n_items)))  # (N, m)
            attn1, attn2 = model.encoder.attention[0], model.encoder.attention[2]
            self._attn_w, self._attn_b, self._attn_v = _np(attn1.weight).T, _np(attn1.bias), _np(attn2.weight)[0]
            self._q_w, self._q_b = _np(model.to_query.weight).T, _np(model.to_query.bias)  # (2H, d)
            d = c.item_dim
            w_s = _np(model.mlp_session.weight).T  # (d + 2 ctx, m): [query | page | device]
            self._sess_q = w_s[:d]
            page_part = _np(model.page_emb.weight) @ w_s[d : d + c.context_dim]  # (pages + 1, m)
            device_part = _np(model.device_emb.weight) @ w_s[d + c.context_dim :]  # (devices + 1, m)
            w_p = _np(model.mlp_pair.weight).T  # (d + 1, m): [query * item | seen]
            self._pair_w = w_p[:d]
            self._item_table = _item_rows(item_part, _np(emb))  # one gather per request
            self._first = np.zeros((d + 2, w_p.shape[1]), dtype=np.float32)  # `_first_layer`'s: the seen row
            self._first[d + 1] = w_p[d]
            self._first.flags.writeable = False
            self._context = page_part[:, None] + device_part[None]  # (pages + 1, devices + 1, m)
            # What `with_items` needs to compute an item's rows: [category table, popularity table, mlp_item].
            self._item_weights = (_np(model.cat_emb.weight), _np(model.pop_emb.weight),
                                  _np(model.mlp_item.weight).T, _np(model.mlp_item.bias))  # fmt: skip
            self._mlp = [(_np(m.weight).T, _np(m.bias)) for m in model.mlp if isinstance(m, torch.nn.Linear)]
        self._zero = np.zeros(0, dtype=np.float32)  # `_relu`'s: read-only, grown (replaced) as needed
        self._context_index = model.context_index
        self._seen = seen  # imported here: this module stays free of torch until a model is loaded
        self._memo = _Memo(self.MEMO)
        self._pools = _Memo(self.POOLS)  # (session, context) -> (pool rows sorted, their logits)
        self.memo_counts = {"hit": 0, "extended": 0, "encoded": 0}

    def item_embeddings(self) -> np.ndarray:
        """The item embeddings (n_items, d), a read-only view of the item table (rows as in `ModelBundle.index_of`):
        the retrieval index reads these instead of a copy of its own (256 MB at a million items)."""
        view = self._item_table[:, : self.config.item_dim]
        view.flags.writeable = False
        return view

    def with_items(self, rows: np.ndarray, embeddings: np.ndarray, categories: np.ndarray) -> FrozenScorer:
        """A scorer of the same weights whose item `rows` hold these item embeddings (k, d) and category rows
        (k,), popularity bucket 0 (a new item's, as `reco.ranking.cold_start.extend_bundle` gives them): rows
        past the tables append (contiguously), others are replaced. The item tables are copied (this scorer
        may be serving: it never changes); the cost is O(tables) memory copy plus O(k) products, where a new
        `FrozenScorer` recomputes every item's rows. The session memo is kept when no row is replaced."""
        rows = np.asarray(rows, dtype=np.int64)
        emb = np.asarray(embeddings, dtype=np.float32)
        n = len(self._item_table)
        n_new = max(n, int(rows.max()) + 1) if len(rows) else n
        cat_w, pop_w, w, b = self._item_weights
        pops = np.zeros(len(rows), dtype=np.int64)
        item_part = np.concatenate([emb, cat_w[np.asarray(categories, dtype=np.int64)], pop_w[pops]], axis=1) @ w + b
        out = copy.copy(self)
        out._item_table = _grown(self._item_table, n_new, rows, _item_rows(item_part, emb))
        out._item_table[len(self._item_table) :, emb.shape[1]] = 1.0  # rows between: zero, as the others' tables
        out.config = replace(self.config, n_items=n_new)
        if (rows < n).any():  # a replaced row changes what was remembered for the sessions that hold it
            for name, memo in vars(self).items():
                if isinstance(memo, _Memo):
                    setattr(out, name, _Memo(memo.size))
        out.memo_counts = {"hit": 0, "extended": 0, "encoded": 0}
        return out

    def _encoded(self, rows: np.ndarray) -> _Encoding:
        """`rows`' encoding: remembered, extended from its remembered prefix by one item, or computed."""
        key = rows.tobytes()
        found = self._memo.get(key)
        if found is not None:
            self.memo_counts["hit"] += 1
            return found
        prefix = self._memo.get(key[: -rows.itemsize]) if len(rows) > 1 else None  # not from the cold start
        if prefix is not None:
            self.memo_counts["extended"] += 1
            found = self._extend(prefix, int(rows[-1]))
        else:
            self.memo_counts["encoded"] += 1
            found = self._encode_all(rows)
        self._memo.put(key, found)
        return found

    def _projected(self, rows: np.ndarray) -> np.ndarray:
        """The first GRU layer's input projections (L, 3H) of item `rows` (L,): `item_emb @ W_ih^T + b_in` (the
        layer's `b_in`: b_ih with the r and z gates' hidden biases folded in)."""
        return self._item_table.take(rows, axis=0)[:, : self.config.item_dim + 1] @ self._in0

    def _encode_all(self, rows: np.ndarray) -> _Encoding:
        """Known item rows (L,), oldest first, encoded in full; no rows: the cold-start query of the module
        (one step over the padding row, no attention)."""
        cold = len(rows) == 0
        h_seq = self._layers[0].run(self._projected(rows if not cold else np.zeros(1, dtype=np.int64)))
        last = [h_seq[-1].copy()]  # copies: the memo keeps these, not the whole sequence
        for layer in self._layers[1:]:
            h_seq = layer.run(h_seq @ layer.w_ih_t + layer.b_in)
            last.append(h_seq[-1].copy())
        if cold:
            return self._finish(tuple(last), np.zeros(0, dtype=np.float32), 0.0, 0.0, np.zeros_like(h_seq[0]))
        e = np.tanh(h_seq @ self._attn_w + self._attn_b) @ self._attn_v  # (L,)
        top = float(e.max())
        w = np.exp(e - top)
        return self._finish(tuple(last), e, top, float(w.sum()), w @ h_seq)

    def _extend(self, prefix: _Encoding, row: int) -> _Encoding:
        """`prefix`'s session plus one item: one step per layer, then the online softmax update."""
        last: list[np.ndarray] = []
        gi = self._projected(np.array([row]))[0]
        for layer, h in zip(self._layers, prefix.last, strict=True):
            if last:
                gi = last[-1] @ layer.w_ih_t + layer.b_in
            last.append(layer.run(gi[None], h0=h)[0])
        h_top = last[-1]
        e = float(np.tanh(h_top @ self._attn_w + self._attn_b) @ self._attn_v)
        top = max(prefix.top, e)
        rescale, w = math.exp(prefix.top - top), math.exp(e - top)
        return self._finish(tuple(last), np.append(prefix.logits, np.float32(e)), top,
                            prefix.weight_sum * rescale + w, prefix.weighted * rescale + w * h_top)  # fmt: skip

    def _finish(
        self, last: tuple[np.ndarray, ...], logits: np.ndarray, top: float, weight_sum: float, weighted: np.ndarray
    ) -> _Encoding:
        """The query and attention from the encoder's state; every array frozen (the memo shares them)."""
        if len(logits):
            attention = (np.exp(logits - top) / weight_sum).astype(np.float32)
            local = (weighted / weight_sum).astype(np.float32)
        else:  # cold start: no attention, the local part is 0
            attention, local = np.zeros(0, dtype=np.float32), weighted
        query = np.concatenate([local, last[-1]]) @ self._q_w + self._q_b
        enc = _Encoding(query, attention, last, logits, top, weight_sum, weighted.astype(np.float32))
        for a in (enc.query, enc.attention, enc.logits, enc.weighted, *enc.last):
            a.flags.writeable = False
        return enc

    def _read(self, session_rows: np.ndarray) -> np.ndarray:
        """Positions the encoder reads: as `ModelBundle.score`, the last max_session_len given, then the known."""
        start = max(0, len(session_rows) - self.config.max_session_len)
        return start + np.flatnonzero(session_rows[start:] > 0)

    def session_query(self, session_rows: np.ndarray) -> np.ndarray:
        """The session's query vector in item space (d,), read-only: `score`'s retrieval term is its dot product
        with each candidate's embedding (candidate retrieval and cold-start code use it). Remembered as in `score`."""
        rows = np.asarray(session_rows, dtype=np.int64)
        return self._encoded(rows[self._read(rows)]).query

    def retrieval_scores(
        self, session_rows: np.ndarray, pool_rows: np.ndarray, page_type: str, device: str
    ) -> np.ndarray:
        """`score`'s logits for a retrieval pool (the `session_query` source ranks by the ranker itself), remembered
        for the same session and context: `score` then gathers its candidates' logits from here instead of
        computing them again (the pool is the costly part: up to `CandidateConfig.query_pool` items)."""
        session_rows = np.asarray(session_rows, dtype=np.int64)
        key = session_rows.tobytes() + f"|{page_type}|{device}".encode()
        order = np.argsort(pool_rows, kind="stable")
        rows = np.asarray(pool_rows, dtype=np.int64)[order]
        enc = self._encoded(session_rows[self._read(session_rows)])
        logits = self._logits(enc.query, session_rows, rows, page_type, device)
        for a in (rows, logits):
            a.flags.writeable = False
        self._pools.put(key, (rows, logits))
        out = np.empty_like(logits)
        out[order] = logits  # in the order of `pool_rows`
        return out

    def _pooled(self, session_rows: np.ndarray, candidate_rows: np.ndarray, page_type: str, device: str,
                query: np.ndarray) -> np.ndarray:  # fmt: skip
        """Candidates' logits: those in this session's remembered retrieval pool gathered, the rest computed."""
        found = self._pools.get(session_rows.tobytes() + f"|{page_type}|{device}".encode())
        if found is None or not len(found[0]):
            return self._logits(query, session_rows, candidate_rows, page_type, device)
        rows, logits = found
        pos = np.minimum(np.searchsorted(rows, candidate_rows), len(rows) - 1)
        hit = rows[pos] == candidate_rows
        out = logits[pos]
        if not hit.all():
            out[~hit] = self._logits(query, session_rows, candidate_rows[~hit], page_type, device)
        return out

    def score(self, session_rows: np.ndarray, candidate_rows: np.ndarray, page_type: str, device: str) -> ScoreResult:
        """session_rows (L,) item rows, oldest first (row 0 = unknown, ignored; the encoder reads the known
        rows among the last max_session_len, the "already seen" feature all of them); candidate_rows (C,) ->
        logits (C,) and attention (L,) aligned with session_rows (0 where the encoder did not read)."""
        session_rows = np.asarray(session_rows, dtype=np.int64)
        candidate_rows = np.asarray(candidate_rows, dtype=np.int64)
        known = self._read(session_rows)
        enc = self._encoded(session_rows[known])
        scores = self._pooled(session_rows, candidate_rows, page_type, device, enc.query)
        attention = np.zeros(len(session_rows), dtype=np.float32)
        attention[known] = enc.attention
        return ScoreResult(scores=scores, attention=attention)

    def _logits(
        self, query: np.ndarray, session_rows: np.ndarray, candidate_rows: np.ndarray, page_type: str, device: str
    ) -> np.ndarray:
        """The ranker's logits (C,) of the candidates for the session's query and context."""
        seen = self._seen(candidate_rows, session_rows, self.config.n_items)  # the ranker's one definition
        d = len(query)
        x = self._item_table.take(candidate_rows, axis=0)  # (C, d + 2 + m): [embedding | 1 | seen | item part]
        x[:, d + 1] = seen
        h = x[:, : d + 2] @ self._first_layer(query, *self._context_index(page_type, device))
        h += x[:, d + 2 :]  # (C, m): the first MLP layer, as `score_candidates` sums it
        for w, b in self._mlp:
            h = self._relu(h) @ w
            h += b
        return x[:, :d] @ query + h[:, 0]

    def _first_layer(self, query: np.ndarray, page: int, dev: int) -> np.ndarray:
        """(d + 2, m): [embedding | 1 | seen] @ it = the first MLP layer less the item part. One product gives
        the pair term, (e * query) @ W_pair == e @ (query * W_pair), the session's and context's part (the
        1's row) and the seen flag's (its row), where adding the last two to the (C, m) product took about
        15 us of 150 (500 candidates). The dot <e, query> is a product of its own: as a column here (m + 1
        columns) the product took as long as both, and m + 2 columns (the MLP's biases folded into its
        products by a 1 column) longer still: OpenBLAS computes the output's columns in blocks of 16."""
        d = len(query)
        w = self._first.copy()
        np.multiply(query[:, None], self._pair_w, out=w[:d])
        np.dot(query, self._sess_q, out=w[d])
        w[d] += self._context[page, dev]
        return w

    def _relu(self, h: np.ndarray) -> np.ndarray:
        """h, ReLU'd in place: `np.maximum` against a zero array of h's shape takes about a third of the time it
        takes against the scalar 0 (numpy 2.4, (500, 64) float32)."""
        zero = self._zero
        if len(zero) < h.size:  # the new array replaces the attribute: a thread holding the old one keeps it
            zero = np.zeros(h.size, dtype=np.float32)
            zero.flags.writeable = False
            self._zero = zero
        return np.maximum(h, zero[: h.size].reshape(h.shape), out=h)

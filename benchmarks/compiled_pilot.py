"""What compiled kernels would save on the request path: today's numpy code against numba versions of the same work.

The serving target p50 <= 1.0x the bare forward asks the pipeline (HTTP, one Redis round trip, three retrieval
sources, ranking, rules, exploration, explanations) to cost no more than the model's forward alone. Each stage
is already within tens of microseconds of its numpy floor (docs/benchmarks.md, "Fifth pass"), so the open question
is what moving stages out of the interpreter buys. This pilot compiles the two costliest kernels of a request and
times them paired against the served code, on the same inputs (MovieLens-100k's 1,682 items, the default
`RankerConfig`, 20-item sessions), after checking that both give the same answer:

- the session encoder's GRU, 2 layers over 20 items (a new session) and one step of both layers (a browsing
  session's next view): `FrozenScorer`'s per-step numpy loop against a numba loop (matrix-vector product and gates
  fused, fastmath);
- the session-similar search (each item's best cosine over 20 session rows, the top 300 with their anchors):
  `EmbeddingIndex._similar_rows` against a numba kernel (one product, the max and argmax fused, a partial sort).

numba is not a dependency of reco (this is the measurement that decides whether it should become one); install it
beside the venv, without touching it:

    .venv/bin/pip install --target /tmp/nbpkgs --no-deps numba==0.68.1 llvmlite==0.50.0
    PYTHONPATH=/tmp/nbpkgs .venv/bin/python benchmarks/compiled_pilot.py [--rounds 5] [--calls 2000]

Prints one JSON line: per kernel the median over rounds of each round's median time per call (us), numpy and numba
alternating round by round, and the compile time of the numba kernels (paid once per process, or once per
machine with numba's cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def kernels():
    """The numba kernels (compiled on first call)."""
    try:
        import numba
    except ImportError:
        sys.exit("numba is not installed: see this script's docstring for the two commands that run it")

    @numba.njit(nogil=True, fastmath=True)
    def gru_run(gi, w_hh, h0):  # gi (L, 3H) input projections; w_hh (H + 1, 3H) as `_GruLayer.w_hh`
        hidden = w_hh.shape[1] // 3
        hs = np.empty((gi.shape[0], hidden), dtype=np.float32)
        h, gh = h0.copy(), np.empty(3 * hidden, dtype=np.float32)
        for t in range(gi.shape[0]):
            gh[:] = w_hh[hidden]  # the bias row (the state's constant 1)
            for i in range(hidden):
                for j in range(3 * hidden):
                    gh[j] += h[i] * w_hh[i, j]
            for j in range(hidden):  # torch's gates: r, z, n
                r = 1.0 / (1.0 + np.exp(-(gi[t, j] + gh[j])))
                z = 1.0 / (1.0 + np.exp(-(gi[t, hidden + j] + gh[hidden + j])))
                n = np.tanh(gi[t, 2 * hidden + j] + r * gh[2 * hidden + j])
                hs[t, j] = n + z * (h[j] - n)
            h[:] = hs[t]
        return hs

    @numba.njit(nogil=True)
    def similar_top(unit, unit_t, q, invalid, k):
        sims = np.dot(unit[q], unit_t)  # (rows, items)
        n = sims.shape[1]
        best, arg = np.empty(n, np.float32), np.zeros(n, np.int64)
        for j in range(n):
            b, a = sims[0, j], 0
            for i in range(1, q.shape[0]):
                if sims[i, j] > b:
                    b, a = sims[i, j], i
            best[j], arg[j] = (-np.inf if invalid[j] else b), a
        for i in range(q.shape[0]):
            best[q[i]] = -np.inf
        top = np.argpartition(-best, k - 1)[:k]
        top = top[np.argsort(-best[top], kind="mergesort")]
        return top, q[arg[top]], best[top]

    return gru_run, similar_top


def per_call_us(fn: Callable, inputs: list, calls: int) -> float:
    times = []
    for i in range(calls):
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=2000, help="calls per kernel per round")
    args = ap.parse_args()
    from serving_latency import full_bundle
    from threadpoolctl import threadpool_limits

    from reco.ranking.candidates import EmbeddingIndex

    threadpool_limits(1, user_api="blas")  # as the server
    gru_run, similar_top = kernels()
    bundle = full_bundle()
    scorer = bundle.frozen_scorer()
    index = EmbeddingIndex(bundle.item_ids, bundle.model.item_emb.weight.detach().numpy())
    first, second = scorer._layers
    zero = np.zeros(second.w_hh.shape[1] // 3, dtype=np.float32)
    rng = np.random.default_rng(0)
    sessions = [rng.choice(np.arange(1, index.n_rows), 20, replace=False) for _ in range(50)]
    invalid = index._invalid.copy()

    def encode_numpy(rows):
        return second.run(first.run(scorer._projected(rows)) @ second.w_ih_t + second.b_in)

    def encode_numba(rows):
        gi = gru_run(scorer._projected(rows), first.w_hh, zero) @ second.w_ih_t + second.b_in
        return gru_run(gi, second.w_hh, zero)

    def step_numpy(rows):
        return second.run(first.run(scorer._projected(rows[-1:]), h0=zero) @ second.w_ih_t + second.b_in, h0=zero)

    def step_numba(rows):
        gi = gru_run(scorer._projected(rows[-1:]), first.w_hh, zero) @ second.w_ih_t + second.b_in
        return gru_run(gi, second.w_hh, zero)

    def search_numpy(rows):
        return index._similar_rows(rows, 300, ())

    def search_numba(rows):
        return similar_top(index._unit, index._unit_t, rows, invalid, 300)

    t0 = time.perf_counter()
    encode_numba(sessions[0]), search_numba(sessions[0])
    compile_s = time.perf_counter() - t0
    for s in sessions:  # the same answers first
        assert np.abs(encode_numpy(s) - encode_numba(s)).max() < 1e-4
        assert np.abs(step_numpy(s) - step_numba(s)).max() < 1e-4
        found, sims = search_numpy(s)
        rows, anchors, best = search_numba(s)
        # the same (item, anchor) pairs at the same similarities; items of equal similarity may come in another order
        served = set(zip(found.rows.tolist(), found.anchors.tolist(), strict=True))
        assert served == set(zip(rows.tolist(), anchors.tolist(), strict=True))
        assert np.allclose(sims, best, atol=1e-6)
    pairs = {"encode_20_items_2_layers": (encode_numpy, encode_numba), "one_step_2_layers": (step_numpy, step_numba),
             "similar_search_20_rows_top_300": (search_numpy, search_numba)}  # fmt: skip
    rounds: dict[str, dict[str, list[float]]] = {k: {"numpy": [], "numba": []} for k in pairs}
    for _ in range(args.rounds):
        for name, (np_fn, nb_fn) in pairs.items():
            rounds[name]["numpy"].append(per_call_us(np_fn, sessions, args.calls))
            rounds[name]["numba"].append(per_call_us(nb_fn, sessions, args.calls))
    out = {name: {kind: round(float(np.median(v)), 1) for kind, v in r.items()} for name, r in rounds.items()}
    for name in out:
        out[name]["saved_us"] = round(out[name]["numpy"] - out[name]["numba"], 1)
    print(json.dumps({"benchmark": "compiled_pilot", "items": index.n_rows, "compile_s": round(compile_s, 2),
                      "rounds": args.rounds, "calls": args.calls, "us_per_call": out}))  # fmt: skip


if __name__ == "__main__":
    main()

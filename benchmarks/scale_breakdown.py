"""Where a request's CPU goes as the catalogue grows: per-step CPU at N items against the 1,682-item reference.

Both pipelines (`benchmarks/scale.py`'s synthetic catalogues and traffic) serve requests in alternation, one
each in turn, so both see the same load; each step's CPU is its own thread's (`time.thread_time`: the sources
may run on the executor), each request's the process's. Variants `tag:inline:nprobe` run in turn on the same
two builds: `inline` 1 is `PipelineConfig`'s default (the ANN and small exact searches on the request thread),
0 sends the N-item pipeline's similarity searches to the executor (`inline_exact_rows=0`: the thread hop; the
reference keeps the default); `nprobe` sets the
ANN's probes for the session query (the similarity sources' item searches keep `item_nprobe`).
docs/benchmarks.md, "Scale", cites its figures.

    python benchmarks/scale_breakdown.py 1000000 800 hop:0:24 inline:1:24 fewer:1:12
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

_CPU: dict[tuple[Any, str], float] = collections.defaultdict(float)
_NOW: list[Any] = ["warm-up"]


def _timed(owner: Any, name: str, label: str) -> None:
    """Wrap `owner.name` to add its thread CPU to `_CPU[(current phase, label)]`."""
    f = getattr(owner, name)

    @functools.wraps(f)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.thread_time()
        try:
            return f(*args, **kwargs)
        finally:
            _CPU[(_NOW[0], label)] += time.thread_time() - t

    setattr(owner, name, timed)


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit("usage: scale_breakdown.py ITEMS REQUESTS TAG:INLINE:NPROBE ...")
    n_items, n_requests, specs = int(argv[0]), int(argv[1]), argv[2:]
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1, user_api="blas")
    import scale

    import reco.models.scorer as scorer
    import reco.ranking.ann as ann
    import reco.ranking.candidates as candidates
    import reco.ranking.recommend as recommend

    _timed(candidates.EmbeddingIndex, "similar_rows", "session_similar")
    _timed(recommend, "ranker_rows", "session_query")
    _timed(ann.AnnIndex, "search", "  faiss search")
    _timed(scorer.FrozenScorer, "_logits", "  scorer._logits")
    _timed(scorer.FrozenScorer, "_encoded", "  scorer._encoded")
    _timed(recommend.Recommender, "_rank", "rank")
    pipes = {}
    for n, seed in ((n_items, 0), (1682, 1)):
        bundle = scale.synthetic_bundle(n)
        model = recommend.ServedModel.build(bundle, str(n))
        traffic = scale._Traffic(list(bundle.item_ids[1:]), seed=seed)
        reco = recommend.Recommender(store=traffic, assign=lambda u: scale._Greedy(), models=lambda arm, m=model: m,
                                     config=recommend.PipelineConfig(features_inline=True))  # fmt: skip
        pipes[n] = (reco, traffic, {}, model)
    big = pipes[n_items][3]
    default = recommend.PipelineConfig().inline_exact_rows
    for spec in specs:
        tag, inline, nprobe = spec.split(":")
        reco = pipes[n_items][0]  # the reference keeps the default: its exact searches on the request thread
        reco.config = dataclasses.replace(reco.config, inline_exact_rows=default if inline == "1" else 0)
        if big.index.ann is not None:
            big.index.ann._index.nprobe = int(nprobe)
        total: dict[int, float] = collections.defaultdict(float)
        for i in range(n_requests + 30):
            for n, (reco, traffic, state, _) in pipes.items():
                sid = traffic.next_session(0, state)
                _NOW[0] = (tag, n) if i >= 30 else "warm-up"
                c = time.process_time()
                reco.recommend(recommend.RecoRequest(user_id="u0", session_id=sid, limit=20))
                if i >= 30:
                    total[n] += time.process_time() - c
        print(f"{tag}: process CPU per request {total[n_items] / n_requests * 1e3:.3f} ms at {n_items:,} items, "
              f"{total[1682] / n_requests * 1e3:.3f} ms at 1,682: {total[n_items] / total[1682]:.2f}x "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
        for label in sorted({label for (phase, label) in _CPU if phase != "warm-up" and phase[0] == tag}):
            a, b = (_CPU[((tag, n), label)] / n_requests * 1e3 for n in (n_items, 1682))
            print(f"   {label:18s} {a:7.3f} {b:7.3f}  {a - b:+.3f} ms", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

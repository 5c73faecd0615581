"""How serving's cost grows with the catalogue: synthetic catalogues with the production model's dimensions.

For each catalogue size (default 1,682 / 10k / 100k / 1M items) a `SessionAwareRanker` with the served
architecture (64-d items, GRU 2x128, attention 64, MLP 64-32; seeded random weights: cost does not depend
on what was learned) and a synthetic catalogue (20 categories, Zipf popularity) are built, then:

* `load_s`: `ModelBundle.load` from disk; `build_s` / `build_cpu_s`: `ServedModel.build` (the scorer's item
  tables, the embedding index: exact below 20k items, faiss IVF above, built here), i.e. what a swap costs off
  the request path, wall and process CPU seconds; `rss_mb`: the process's resident memory with that model;
* `ann_recall@100`: the ANN's recall@100 against exact search (200 items' own vectors as queries, as the
  similarity sources search: `item_nprobe` cells); `ann_query_recall@300`: its recall@300 for the `session_query`
  source's queries (the scorer's session query of 200 random sessions, `nprobe` cells), against exact cosine;
* request latency of the request pipeline (`Recommender.recommend`, in process: no HTTP, no Redis, which
  cost the same at any catalogue size) on realistic traffic: every request is a new session or a session
  that gained one view since its last request (sessions of 1-20 views); p50/p99 of one client, and p50/p99 +
  recommendations/s of 4 client threads;
* paired and CPU figures, for a shared machine whose load moves wall latencies 2-3x between runs: the one
  client runs in 10 blocks alternating with the `--ref` catalogue (1,682 items, built once), so both see the
  same load (`p50_ratio_vs_ref`), and each request's process CPU time is recorded (`cpu_p50_ms`, every
  thread's: the sources run on the executor; `cpu_p50_ratio_vs_ref`), which waiting for a core does not add to;
* `swap_dropped`: requests that failed while the model was swapped under 4 clients (a new build put in
  place with one reference assignment, as the model manager does) -- the target is 0;
* `updates` (with `--updates K ...`): incremental catalogue updates (`ServedModel.updated`, what an API
  worker does after `PUT /v1/items`) of K new items each, in turn, then one item made unavailable:
  [K, wall s, CPU s] each (the first also fits the content map, once per bundle), to compare with `build_s`.

Prints one JSON line per size and a final summary line; `--plot FILE` draws the cost-growth plot; `--rows`
adds the JSON lines of earlier runs (other sizes) to the summary and the plot.

    python benchmarks/scale.py [--sizes 1682 10000 100000 1000000] [--requests 400] [--updates 1 1 100 10000]
                               [--rows earlier.jsonl] [--plot docs/scale.png]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from reco.state.records import RequestFeatures


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_bundle(n_items: int, seed: int = 0) -> Any:
    """A production-sized model over `n_items` synthetic items (clustered embeddings, Zipf popularity)."""
    import torch

    from reco.artifacts.bundle import PAD, ModelBundle
    from reco.data.catalog import ItemCatalog
    from reco.models.ranker import RankerConfig, SessionAwareRanker

    rng = np.random.default_rng(seed)
    cats = [f"cat{k}" for k in range(20)]
    ids = [f"i{k}" for k in range(1, n_items + 1)]
    item_cat = rng.integers(0, len(cats), n_items)
    catalog = ItemCatalog.from_records(
        {"item_id": iid, "title": f"Item {iid}", "genres": [cats[c]]} for iid, c in zip(ids, item_cat, strict=True)
    )
    torch.manual_seed(seed)
    model = SessionAwareRanker(RankerConfig(n_items=n_items + 1, n_categories=len(cats) + 1))
    centres = rng.standard_normal((max(16, n_items // 200), 64)).astype(np.float32)
    emb = centres[rng.integers(0, len(centres), n_items)] + 0.5 * rng.standard_normal((n_items, 64)).astype(np.float32)
    with torch.no_grad():
        model.item_emb.weight[1:] = torch.from_numpy(0.05 * emb)
        model.item_category[1:] = torch.from_numpy(item_cat + 1)
    counts = 1e6 / np.arange(1, n_items + 1) ** 1.1
    popularity = {iid: float(c) for iid, c in zip(ids, rng.permutation(counts), strict=True)}
    return ModelBundle(model=model, item_ids=[PAD, *ids], catalog=catalog, meta={"popularity": popularity})


class _Traffic:
    """Sessions for the pipeline's store protocol: each request is a new session, or the client's current
    session with one more view (a browse step); sessions end after 1-20 views."""

    def __init__(self, item_ids: list[str], seed: int) -> None:
        self.item_ids = item_ids
        self.rng = np.random.default_rng(seed)
        self.sessions: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.count = 0

    def next_session(self, client: int, state: dict) -> str:
        with self.lock:
            sid = state.get("sid")
            if sid is None or len(self.sessions[sid]) >= state["len"]:
                self.count += 1
                sid = f"c{client}-{self.count}"
                self.sessions[sid] = []
                state.update(sid=sid, len=int(self.rng.integers(1, 21)))
            self.sessions[sid].append(self.item_ids[int(self.rng.integers(len(self.item_ids)))])
            return sid

    def request_context(self, user_id: str, session_id: str | None, *args: Any, **kwargs: Any) -> RequestFeatures:
        return RequestFeatures.of_session(list(self.sessions.get(session_id or "", []))[-50:])

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_CUT = [0]  # requests whose candidate source ran past its budget (cut, served without it)


class _Greedy:
    arm, alias = "control", "arm-control"

    class exploration:
        strategy, rate = "none", 0.0


def _clients(
    reco: Any, traffic: _Traffic, n_clients: int, n_requests: int, on_error: list, cpu: list | None = None
) -> list[float]:
    """Wall seconds per request; with `cpu` (one client only) also the process's CPU seconds per request
    (every thread's: the sources run on the executor), which the other engineers' load does not inflate."""
    from reco.ranking.recommend import RecoRequest

    latencies: list[float] = []
    lock = threading.Lock()
    cut = _CUT

    def client(k: int) -> None:
        state: dict = {}
        mine = []
        for _ in range(n_requests):
            sid = traffic.next_session(k, state)
            c0 = time.process_time()
            t0 = time.perf_counter()
            try:
                result = reco.recommend(RecoRequest(user_id=f"u{k}", session_id=sid, limit=20))
                if not result.items:
                    on_error.append("empty")
                if any(d.startswith("candidates:") for d in result.degraded):
                    cut[0] += 1
            except Exception as exc:  # counted: a swap must drop nothing
                on_error.append(repr(exc))
            mine.append(time.perf_counter() - t0)
            if cpu is not None:
                cpu.append(time.process_time() - c0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def ann_recall(index: Any, queries: int = 200, k: int = 100) -> float:
    """recall@k of the index's ANN against exact search, queries = random items' own vectors, as the similarity
    sources search them (`items`: the ANN's `item_nprobe` cells)."""
    from reco.ranking.ann import recall_at_k

    rows = np.flatnonzero(~index._invalid)
    picked = np.random.default_rng(3).choice(rows, queries, replace=False)
    return round(recall_at_k(index._unit, rows, index.ann, index._unit[picked], k, items=True), 4)


def ann_query_recall(model: Any, queries: int = 200, k: int = 300) -> float:
    """recall@k of the ANN for the `session_query` source's queries (the scorer's session query of random
    sessions of 1-20 items, the ANN's `nprobe` cells) against exact search by cosine."""
    from reco.ranking.ann import recall_at_k

    index = model.index
    rows = np.flatnonzero(~index._invalid)
    rng = np.random.default_rng(4)
    q = np.stack([model.scorer.session_query(rng.choice(rows, int(rng.integers(1, 21)))) for _ in range(queries)])
    return round(recall_at_k(index._unit, rows, index.ann, q, k), 4)


_REF: dict[str, Any] = {}  # the reference catalogue's pipeline, built once (paired measurement)


def _pipeline(model: Any, item_ids: list[str], seed: int) -> tuple[Any, _Traffic, dict]:
    from reco.ranking.recommend import PipelineConfig, Recommender

    state = {"model": model}
    traffic = _Traffic(item_ids, seed=seed)
    config = PipelineConfig(features_inline=True)
    reco = Recommender(store=traffic, assign=lambda u: _Greedy(), models=lambda arm: state["model"], config=config)
    return reco, traffic, state


def _reference(n_items: int) -> tuple[Any, _Traffic]:
    """The `--ref` catalogue's pipeline, measured in alternation with each size under the same load."""
    if _REF.get("items") != n_items:
        from reco.ranking.recommend import ServedModel

        bundle = synthetic_bundle(n_items)
        reco, traffic, _ = _pipeline(ServedModel.build(bundle, "ref"), list(bundle.item_ids[1:]), seed=1)
        _clients(reco, traffic, 1, 30, [])  # warm-up
        _REF.update(items=n_items, reco=reco, traffic=traffic)
    return _REF["reco"], _REF["traffic"]


def _paired(reco: Any, traffic: _Traffic, n_requests: int, ref_items: int, errors: list) -> dict[str, list]:
    """1 client, in 10 alternating blocks: this catalogue, then the reference one (wall and CPU per request)."""
    ref_reco, ref_traffic = _reference(ref_items)
    out: dict[str, list] = {"wall": [], "cpu": [], "ref_wall": [], "ref_cpu": []}
    block = max(1, n_requests // 10)
    for _ in range(10):
        out["wall"] += _clients(reco, traffic, 1, block, errors, out["cpu"])
        out["ref_wall"] += _clients(ref_reco, ref_traffic, 1, block, [], out["ref_cpu"])
    return out


def _updates(model: Any, sizes: list[int], categories: int = 20) -> dict[str, Any]:
    """Incremental catalogue updates (`ServedModel.updated`, what the API does when items are upserted) on
    `model`: `sizes` new items in turn (the first also fits the content map, once per bundle), then one
    trained item made unavailable; wall and CPU seconds of each, and requests served on the result."""
    from reco.data.catalog import ItemRecord

    records: dict[str, ItemRecord] = {}
    steps = []
    for k in [*sizes, 0]:
        records = dict(records)  # as the catalogue follower: a new mapping, unchanged records kept
        if k:
            n = len(records)
            cats = [[f"cat{j % categories}"] for j in range(n, n + k)]
            records.update((f"new{n + j}", ItemRecord(item_id=f"new{n + j}", title=f"New item {n + j} blue",
                                                      categories=c)) for j, c in enumerate(cats))  # fmt: skip
        else:
            records["i1"] = ItemRecord(item_id="i1", title="Item i1", categories=["cat0"], available=False)
        c0, t0 = time.process_time(), time.perf_counter()
        model = model.updated(records, catalog_version=len(steps) + 1)
        steps.append(
            [k if k else "unavailable", round(time.perf_counter() - t0, 2), round(time.process_time() - c0, 2)]
        )
    assert model.blocked is not None and model.blocked[model.index.row_of("i1")]
    return {"updates": steps, "updated_items": model.index.n_rows - 1}


def measure(n_items: int, args: argparse.Namespace) -> dict[str, Any]:
    from reco.artifacts.bundle import ModelBundle
    from reco.ranking.recommend import ServedModel

    _CUT[0] = 0
    cut = _CUT
    base_rss = _rss_mb()
    t0 = time.perf_counter()
    bundle = synthetic_bundle(n_items)
    with tempfile.TemporaryDirectory(prefix="reco-scale-") as tmp:
        bundle.save(tmp)
        del bundle
        gc.collect()
        t1 = time.perf_counter()
        bundle = ModelBundle.load(tmp)
    t2, c2 = time.perf_counter(), time.process_time()
    model = ServedModel.build(bundle, "1")
    t3, c3 = time.perf_counter(), time.process_time()
    rss = _rss_mb()
    recall = ann_recall(model.index) if model.index.ann is not None else None
    query_recall = ann_query_recall(model) if model.index.ann is not None else None
    reco, traffic, state = _pipeline(model, list(bundle.item_ids[1:]), seed=0)
    errors: list = []
    _clients(reco, traffic, 1, 30, errors)  # warm-up
    paired = {k: np.array(v) * 1000 for k, v in _paired(reco, traffic, args.requests, args.ref, errors).items()}
    one = paired["wall"]
    start = time.perf_counter()
    four = np.array(_clients(reco, traffic, 4, args.requests // 4, errors)) * 1000
    wall = time.perf_counter() - start
    # A swap under load: 4 clients run while a new build of the same bundle is put in place.
    swap_errors: list = []
    done = threading.Event()

    def swap() -> None:
        state["model"] = ServedModel.build(bundle, "2")
        done.set()

    swapped = 0
    if args.swap:
        swapper = threading.Thread(target=swap)
        swapper.start()
        while not done.is_set():
            swapped += len(_clients(reco, traffic, 4, 10, swap_errors))
        swapper.join()
    ann = model.index.ann is not None
    model = None  # the swapped-in build serves; one copy less in memory for the updates
    gc.collect()
    updated = _updates(state["model"], args.updates) if args.updates else {}
    out = {
        "benchmark": "scale",
        "items": n_items,
        "ann": ann,
        "ann_recall@100": recall,
        "ann_query_recall@300": query_recall,
        "synth_s": round(t1 - t0, 1),
        "load_s": round(t2 - t1, 2),
        "build_s": round(t3 - t2, 2),
        "build_cpu_s": round(c3 - c2, 2),
        "rss_mb": round(rss, 0),
        "model_rss_mb": round(rss - base_rss, 0),
        "p50_ms": round(float(np.percentile(one, 50)), 2),
        "p99_ms": round(float(np.percentile(one, 99)), 2),
        "cpu_p50_ms": round(float(np.percentile(paired["cpu"], 50)), 3),
        "cpu_mean_ms": round(float(paired["cpu"].mean()), 3),
        "ref_items": args.ref,
        "ref_p50_ms": round(float(np.percentile(paired["ref_wall"], 50)), 2),
        "ref_cpu_p50_ms": round(float(np.percentile(paired["ref_cpu"], 50)), 3),
        "p50_ratio_vs_ref": round(float(np.percentile(one, 50) / np.percentile(paired["ref_wall"], 50)), 2),
        "cpu_p50_ratio_vs_ref": round(
            float(np.percentile(paired["cpu"], 50) / np.percentile(paired["ref_cpu"], 50)), 2
        ),
        "c4_p50_ms": round(float(np.percentile(four, 50)), 2),
        "c4_p99_ms": round(float(np.percentile(four, 99)), 2),
        "c4_rec_per_s": round(len(four) / wall, 1),
        "swap_requests": swapped if args.swap else None,
        "swap_dropped": len(swap_errors) if args.swap else None,
        "errors": len(errors),
        "degraded_cut": cut[0],
        "load_avg": round(os.getloadavg()[0], 1),
        **updated,
    }
    print(json.dumps(out), flush=True)
    gc.collect()
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["items"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(n, [r["cpu_p50_ms"] for r in rows], "^-", label="CPU p50, 1 client")
    a.plot(n, [r["ref_cpu_p50_ms"] for r in rows], "v:", label="CPU p50, 1,682 items (paired)")
    a.plot(n, [r["p50_ms"] for r in rows], "o--", label="wall p50, 1 client (load)")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("catalogue items")
    a.set_ylabel("ms per request")
    a.legend(fontsize=8, loc="upper left")
    a.set_title("request cost (pipeline, in process)")
    # The figure for the target: each size's CPU over the reference's, measured in alternation (same load).
    ratio = a.twinx()
    ratio.plot(n, [r.get("cpu_p50_ratio_vs_ref") or float("nan") for r in rows], "s-", color="black",
               label="CPU ratio vs 1,682 (paired), right axis")  # fmt: skip
    ratio.axhline(1.5, color="grey", linestyle=":", label="target 1.5x")
    ratio.set_ylim(0, 3)
    ratio.legend(fontsize=8, loc="lower right")
    b.plot(n, [r["build_s"] for r in rows], "o--", label="build s (wall, load)")
    b.plot(n, [r.get("build_cpu_s") or float("nan") for r in rows], "^-", label="build s (CPU)")
    b.plot(n, [r["model_rss_mb"] / 1000 for r in rows], "s--", label="model memory GB")
    b.set_xscale("log")
    b.set_yscale("log")
    b.set_xlabel("catalogue items")
    b.legend()
    b.set_title("swap cost off the request path")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[1682, 10_000, 100_000, 1_000_000],
        help="catalogue sizes to measure (none: only summarise / plot the --rows)",
    )
    p.add_argument("--requests", type=int, default=400, help="requests per measurement (1 client; 4 share them)")
    p.add_argument(
        "--ref",
        type=int,
        default=1682,
        help="reference catalogue measured in alternation with each size (paired: same load)",
    )
    p.add_argument(
        "--updates",
        type=int,
        nargs="*",
        default=[],
        help="new items per incremental catalogue update, in turn (e.g. 1 1 100 10000)",
    )
    p.add_argument(
        "--no-swap",
        dest="swap",
        action="store_false",
        help="skip the swap under load (a second full build: long at 1M items on a loaded machine)",
    )
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument(
        "--rows",
        type=Path,
        nargs="*",
        default=[],
        help="JSON lines of earlier runs (other sizes) to include in the summary and the plot",
    )
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except ImportError:
        pass
    rows = [measure(n, args) for n in args.sizes]
    for path in args.rows:
        rows += [r for line in path.read_text().splitlines() if line.startswith("{")
                 if (r := json.loads(line)).get("items") and "p50_ms" in r]  # fmt: skip
    rows = sorted({r["items"]: r for r in rows}.values(), key=lambda r: r["items"])
    first, last = rows[0], rows[-1]
    summary = {"benchmark": "scale", "summary": True, "sizes": [r["items"] for r in rows],
               "p50_ratio_largest_vs_smallest": round(last["p50_ms"] / first["p50_ms"], 2),
               "cpu_p50_ratio_largest_vs_smallest": round(last["cpu_p50_ms"] / first["cpu_p50_ms"], 2),
               "paired_cpu_p50_ratio_largest": last.get("cpu_p50_ratio_vs_ref"),
               "swap_dropped": sum(r["swap_dropped"] or 0 for r in rows)}  # fmt: skip
    print(json.dumps(summary), flush=True)
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process).

Several workers: `reco serve --workers N` (N > 1) sets `PROMETHEUS_MULTIPROC_DIR` to an emptied
`<RECO_HOME>/run/prometheus/` before the workers start (prometheus_client reads it at import). Every worker
then writes its values to files there, and `/metrics`, whichever worker answers, renders all workers'
figures merged by a `MultiProcessCollector`: counters and histograms summed, the model-version gauges
showing the value most recently set by a live worker (`livemostrecent`). A worker that exits marks itself
dead so that its gauges drop out.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from reco.ranking.recommend import RecoResult, ServedModel

_LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = _multiprocess()
        gauge_mode = {"multiprocess_mode": "livemostrecent"} if self.multiprocess else {}
        r = self.registry = CollectorRegistry()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}  # see `_child`
        self.latency = Histogram(
            "reco_recommendation_latency_seconds", "pipeline latency per request", ["arm"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.candidates = Counter("reco_candidates_total", "merged candidates by source", ["source"], registry=r)
        self.fallbacks = Counter("reco_fallbacks_total", "requests served with a degraded part", ["part"], registry=r)
        self.exploration = Counter("reco_exploration_items_total", "served exploration items", ["arm"], registry=r)
        self.model_version = Gauge("reco_model_version", "registry version served per arm", ["arm"], registry=r,
                                   **gauge_mode)  # fmt: skip
        self.online_snapshot = Gauge("reco_online_snapshot", "online weight snapshot per arm (0 = none)", ["arm"],
                                     registry=r, **gauge_mode)  # fmt: skip
        self.model_swaps = Counter("reco_model_swaps_total", "models put in place per arm", ["arm"], registry=r)
        self.model_refused = Counter(
            "reco_model_refused_total", "registry versions / online snapshots refused by the smoke test",
            ["arm", "kind"], registry=r,
        )  # fmt: skip
        self.events = Counter("reco_events_total", "POST /v1/events outcomes", ["result"], registry=r)
        self.impression_log_failures = Counter(
            "reco_impression_log_failures_total", "impression batches that could not be written", registry=r
        )
        # Every HTTP answer (serving.observability): the route template, never the raw path.
        self.http_requests = Counter(
            "reco_http_requests_total", "HTTP requests by route, method and status", ["route", "method", "status"],
            registry=r,
        )  # fmt: skip
        self.http_latency = Histogram(
            "reco_http_request_duration_seconds", "time to the last response byte, by route, method and status",
            ["route", "method", "status"], buckets=_HTTP_BUCKETS, registry=r,
        )  # fmt: skip
        # CTR per arm on the dashboard: items served per arm, clicks that name their arm (the event contract)
        self.served_items = Counter("reco_served_items_total", "items served per arm", ["arm"], registry=r)
        self.clicks = Counter(
            "reco_clicks_total", "accepted click events per arm (events carrying `arm`)", ["arm"], registry=r
        )
        self.expected_share = Gauge(
            "reco_arm_expected_share", "configured traffic share per arm (the SRM alert's reference)", ["arm"],
            registry=r, **gauge_mode,
        )  # fmt: skip

    def clicks_observed(self, events: Any, duplicates: int) -> None:
        """Clicks of an accepted batch per arm. A batch with duplicates (a client's retry) is left out, so a
        retried click is never counted twice."""
        if duplicates:
            return
        for e in events:
            if e.event_type == "click" and e.arm:
                self.clicks.labels(arm=e.arm).inc()

    def _child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)` (label names in declaration order), remembered: every request updates
        ~6 labelled series, and `labels` validates and locks on each call. The label values are bounded (routes,
        methods, statuses, arms, sources, parts), so is this map."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def http_observed(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = (route, method, str(status))
        self._child(self.http_requests, *labels).inc()
        self._child(self.http_latency, *labels).observe(seconds)

    def configured_split(self, shares: dict[str, float]) -> None:
        for arm, share in shares.items():
            self.expected_share.labels(arm=arm).set(share)

    def observe(self, result: RecoResult) -> None:
        arm = result.experiment_group
        self._child(self.latency, arm).observe(result.latency_ms / 1000)
        self._child(self.served_items, arm).inc(len(result.items))
        for source, n in result.candidates_per_source.items():
            self._child(self.candidates, source).inc(n)
        for part in result.degraded:
            self._child(self.fallbacks, part).inc()
        n_explore = sum(1 for it in result.items if it.is_exploration)
        if n_explore:
            self._child(self.exploration, arm).inc(n_explore)

    def model_changed(self, arm: str, model: ServedModel) -> None:
        self.model_swaps.labels(arm=arm).inc()
        self.model_version.labels(arm=arm).set(_number(model.version))
        self.online_snapshot.labels(arm=arm).set(model.online_snapshot or 0)

    def model_refused_by_smoke_test(self, arm: str, kind: str) -> None:
        """`kind`: "registry" (a version) or "online" (a weight snapshot)."""
        self.model_refused.labels(arm=arm, kind=kind).inc()

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:  # every worker's files, merged (a fresh registry per scrape, as documented)
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def process_exited(self) -> None:
        """Drop this worker's live gauges from the merged figures (multiprocess mode)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


def _number(version: Any) -> float:
    try:
        return float(version)
    except (TypeError, ValueError):
        return -1.0

"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process).

With several uvicorn workers each process exposes its own figures; scrape each worker or run
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR) in production.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from reco.recommend import RecoResult, ServedModel

_LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.latency = Histogram(
            "reco_recommendation_latency_seconds", "pipeline latency per request", ["arm"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.candidates = Counter("reco_candidates_total", "merged candidates by source", ["source"], registry=r)
        self.fallbacks = Counter("reco_fallbacks_total", "requests served with a degraded part", ["part"], registry=r)
        self.exploration = Counter("reco_exploration_items_total", "served exploration items", ["arm"], registry=r)
        self.model_version = Gauge("reco_model_version", "registry version served per arm", ["arm"], registry=r)
        self.online_snapshot = Gauge("reco_online_snapshot", "online weight snapshot per arm (0 = none)", ["arm"],
                                     registry=r)  # fmt: skip
        self.model_swaps = Counter("reco_model_swaps_total", "models put in place per arm", ["arm"], registry=r)
        self.events = Counter("reco_events_total", "POST /v1/events outcomes", ["result"], registry=r)
        self.impression_log_failures = Counter(
            "reco_impression_log_failures_total", "impression batches that could not be written", registry=r
        )

    def observe(self, result: RecoResult) -> None:
        self.latency.labels(arm=result.experiment_group).observe(result.latency_ms / 1000)
        for source, n in result.candidates_per_source.items():
            self.candidates.labels(source=source).inc(n)
        for part in result.degraded:
            self.fallbacks.labels(part=part).inc()
        n_explore = sum(1 for it in result.items if it.is_exploration)
        if n_explore:
            self.exploration.labels(arm=result.experiment_group).inc(n_explore)

    def model_changed(self, arm: str, model: ServedModel) -> None:
        self.model_swaps.labels(arm=arm).inc()
        self.model_version.labels(arm=arm).set(_number(model.version))
        self.online_snapshot.labels(arm=arm).set(model.online_snapshot or 0)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _number(version: Any) -> float:
    try:
        return float(version)
    except (TypeError, ValueError):
        return -1.0

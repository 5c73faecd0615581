"""The recommendation response body, written by hand from the pipeline's result: building pydantic
models and letting FastAPI dump them cost more than the rest of the HTTP layer together. A test holds it
equal to `RecommendationResponse`'s own serialisation (tests/test_render.py). `recommendation` runs the
pipeline for one validated request and renders its answer: the route and `RecommendFastPath` both answer
through it."""

from __future__ import annotations

from datetime import datetime

import orjson

from reco.ranking.recommend import NoModelAvailable, RecoRequest, RecoResult
from serving.errors import ApiError
from serving.schemas import RecommendationRequest
from serving.services import Services


def recommendation(
    services: Services, body: RecommendationRequest, ts: datetime | None, *, log_now: bool = False
) -> tuple[bytes, RecoResult]:
    """The 200 body for one validated request, and the pipeline's result: the caller records it
    (`services.metrics.observe`) and starts its impression write (`result.start_log`, None: nothing to
    start), both best once the body is sent. `log_now` (simulated time): the write starts before the answer
    (and lands before it without a log executor). No model loaded: `ApiError` 503."""
    req = RecoRequest(
        user_id=body.user_id,
        page_type=body.page_type,
        context_item_id=body.context_item_id,
        session_id=body.session_id,
        device=body.device,
        limit=body.limit,
        ts=ts,
    )
    # On the event loop, not the thread pool: the pipeline holds the GIL nearly all the way (numpy scoring,
    # Python rules), so pool threads could not overlap it anyway, and the hop to a pool thread and back
    # cost ~0.5 ms a request (docs/benchmarks.md, "Serving"); throughput at 1-8 clients was the same or
    # better. Its one wait, the features read, is bounded by the features budget, and a Redis that
    # hangs is skipped for `features_cooldown_s` after one slow failure. Scale out with --workers.
    try:
        result = services.recommender.recommend(req, defer_log=not log_now)
    except NoModelAvailable as exc:
        raise ApiError(503, f"not ready: {exc}", {"Retry-After": "5"}) from None
    return response_json(result), result


def response_json(result: RecoResult) -> bytes:
    """The `RecommendationResponse` body of a pipeline result (same fields, same order as the schema)."""
    items = [
        {"item_id": it.item_id, "score": it.score, "reason": it.reason, "source": it.source, "position": it.position,
         "is_exploration": it.is_exploration, "propensity": it.propensity}
        for it in result.items
    ]  # fmt: skip
    body = {
        "request_id": result.request_id,
        "user_id": result.user_id,
        "items": items,
        "model_version": result.model_version,
        "online_snapshot": result.online_snapshot,
        "latency_ms": result.latency_ms,
        "experiment_group": result.experiment_group,
        "alias": result.alias,
        "degraded": result.degraded,
    }
    return orjson.dumps(body)  # ~5 us against ~70 us for json.dumps (docs/benchmarks.md, "Serving")

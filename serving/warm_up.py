"""A worker's warm-up before it serves: every arm's pipeline run once, with nothing written anywhere.

A new worker's first recommendations cost several times the steady state: the first request of a fresh
uvicorn worker took 20 ms (its pipeline 19 ms) against ~2 ms for the next ones, and with 4 clients on 2
fresh workers the first request of each client took 24-38 ms against a p50 of 10 ms (docs/benchmarks.md,
"Serving on realistic traffic"). The cost is one-off: the read client's connection and its script load,
numpy's first calls on each path, the models' first scoring, the exploration policies' first draws, the
log thread's start. Paid at start-up (inside the lifespan, before the worker accepts a connection), no user
waits for it.

The warm-up runs a twin of the worker's pipeline (`Recommender`): the same store, models, configuration
and candidate executor, but its own exploration policies (the served policies' random streams stay as they
were) and its own new-item counts, for a user id no client sends, with a session of the arm's most popular
items laid over what the store answers (so the session sources and the encoder run too). Its impression
write is never started, so nothing of it reaches Redis, the lake or the metrics. A warm-up that fails (no
model, Redis down) is logged and the worker starts anyway: its requests then degrade as they would have.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from reco.experiments.assignment import Assignment, ExperimentSpec
from reco.ranking.exploration import ArmPolicies
from reco.ranking.recommend import Recommender, RecoRequest
from serving.render import response_json

log = logging.getLogger(__name__)

#: The warm-up's user id (never assigned an arm: the twin's assignment is fixed per arm).
WARM_UP_USER = "__reco-warm-up__"
#: Items in the warm-up session: enough for every session path (encoder, similar items, explanations).
SESSION_ITEMS = 5


class _SessionOverlay:
    """The store's request read, with the warm-up session laid over its answer (reads only, as the pipeline's)."""

    def __init__(self, store: Any, session: Callable[[], list[str]]) -> None:
        self.store = store
        self.session = session

    def request_context(self, *args: Any, **kwargs: Any) -> Any:
        features = self.store.request_context(*args, **kwargs)
        return dataclasses.replace(features, session_items=self.session())


def warm_up(
    recommender: Recommender,
    experiment: ExperimentSpec,
    *,
    executor: Executor,
    max_per_category: int | None,
    log_executor: Executor | None = None,
    limit: int = 20,
) -> dict[str, list[str]]:
    """Run one request per arm of `experiment` through a twin of `recommender` (its candidate sources on
    `executor`, as the worker's); returns each arm's degraded parts (empty: the whole pipeline ran; "no model":
    nothing loaded yet, nothing run). `log_executor`, when given, starts its thread now."""
    if log_executor is not None:
        log_executor.submit(lambda: None).result()
    started = time.perf_counter()
    outcome: dict[str, list[str]] = {}
    for arm in experiment.arms:
        assignment = Assignment(experiment.name, arm.name, arm.alias, arm.exploration, 0.0)
        if recommender.models(arm.name) is None and recommender.fallback_model() is None:
            outcome[arm.name] = ["no model"]
            continue
        try:
            outcome[arm.name] = _one(recommender, assignment, executor, max_per_category, limit)
        except Exception as exc:  # a warm-up never stops a worker from starting
            log.warning("warm-up of arm %s failed: %s", arm.name, exc)
            outcome[arm.name] = ["warm-up"]
    log.info("warm-up: %d arms in %.0f ms %s", len(outcome), (time.perf_counter() - started) * 1000, outcome)
    return outcome


def _one(
    recommender: Recommender, assignment: Assignment, executor: Executor, max_per_category: int | None, limit: int
) -> list[str]:
    def session() -> list[str]:
        model = recommender.models(assignment.arm) or recommender.fallback_model()
        if model is None:
            return []
        return _popular_ids(model.index.ids, model.popular_rows.rows[:SESSION_ITEMS].tolist())

    store = recommender.store
    twin = Recommender(
        store=None if store is None else _SessionOverlay(store, session),
        assign=lambda user: assignment,
        models=recommender.models,
        fallback_model=recommender.fallback_model,
        explorer_for=ArmPolicies(max_per_category=max_per_category).explorer,
        config=recommender.config,
        executor=executor,
    )
    result = twin.recommend(
        RecoRequest(WARM_UP_USER, session_id=WARM_UP_USER, limit=limit), defer_log=True
    )  # its impression write (`result.start_log`) is never started
    response_json(result)
    return result.degraded


def _popular_ids(ids: Sequence[str], rows: list[int]) -> list[str]:
    return [str(ids[r]) for r in rows if r > 0]

"""What every route reads: the worker's `Services` (store, models, pipeline, metrics), kept on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from reco.ranking.recommend import Recommender
from serving.metrics import Metrics
from serving.models import ModelManager
from serving.settings import Settings


@dataclass
class Services:
    settings: Settings
    store: Any | None
    manager: ModelManager
    recommender: Recommender
    metrics: Metrics
    items: Any | None = None  # reco.state.items.ItemStore: the catalogue API's store


async def services_of(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services_of)]

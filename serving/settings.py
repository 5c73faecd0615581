"""API server settings: `RecoSettings` (Redis, MLflow, experiments; `RECO_*` environment) plus HTTP,
security and model-manager knobs. Every field can be set from the environment, e.g.
`RECO_API_KEYS=k1,k2` (or JSON, `'["k1","k2"]'`), `RECO_PORT=8000`, `RECO_MODEL_POLL_S=10`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import NoDecode

from reco.settings import CommaList, RecoSettings, split_list

#: Largest accepted `POST /v1/events` batch (documented in docs/api.md).
MAX_EVENTS_PER_BATCH = 1000


class Settings(RecoSettings):
    host: str = Field("127.0.0.1", description="bind address of `reco serve`")
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes (shared state lives in Redis)")
    api_keys: Annotated[list[SecretStr], NoDecode, BeforeValidator(split_list)] = Field(
        default_factory=list, description="keys accepted in X-API-Key for /v1/events and admin routes (a,b,c)"
    )
    require_api_key: bool = Field(True, description="False only for the local demo")
    cors_origins: CommaList = Field(default_factory=list, description="allowed CORS origins (a,b); empty = CORS closed")
    max_events_per_batch: int = Field(MAX_EVENTS_PER_BATCH, ge=1, le=100_000)
    max_body_bytes: int = Field(2_000_000, ge=1024, description="requests with a larger body get 413")
    model_poll_s: float = Field(30.0, gt=0, description="how often the registry and weight snapshots are checked")
    model_cache_dir: Path | None = Field(None, description="last good bundle per arm; unset = <home>/model-cache")
    source_timeout_ms: float = Field(50.0, gt=0, description="per candidate source time budget")
    features_timeout_ms: float = Field(50.0, gt=0, description="time budget of the features round trip")
    torch_threads: int = Field(1, ge=1, le=64, description="intra-op threads of the model forward")
    max_candidates: int = Field(500, ge=1, le=5000)
    max_per_category: int | None = Field(3, ge=1, description="diversity cap in the served page")
    drop_history: bool = Field(
        True, description="the served list drops the user's history (RECO_USER_ITEMS_MAX items), not only the session"
    )
    recent_items_users: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="users whose history each worker remembers and reads by its new items only (~4 KB a user at "
        "500 items); 0 = read the whole history on every request",
    )
    max_items_per_batch: int = Field(1000, ge=1, le=100_000, description="largest PUT /v1/items batch")
    ann_threshold: int = Field(20_000, ge=0, description="items above which similarity sources use the ANN index")
    cold_start_bonus: float = Field(
        2.0, ge=0, description="new items' exploration bonus at 0 impressions, in units of the request's score spread"
    )
    cold_start_max_impressions: int = Field(200, ge=0, description="impressions after which the bonus stops")
    exploration_seed: int | None = Field(None, description="seed of the exploration RNGs (tests, simulations)")
    log_impressions_async: bool = Field(True, description="write impressions off the request path")
    fast_path: bool = Field(
        True, description="answer valid POST /v1/recommendations past FastAPI's routing layer (same answers)"
    )
    honour_event_time_header: bool = Field(
        False,
        description="stamp served impressions with the request's X-Reco-Event-Time (simulated time; demo only)",
    )

    @model_validator(mode="after")
    def _simulated_time_stamps_impressions(self) -> Settings:
        # The simulator's requests carry their simulated time: under its clock the header is always honoured.
        if self.simulated_clock:
            self.honour_event_time_header = True
        return self

    @property
    def cache_dir(self) -> Path:
        return self.model_cache_dir or self.home / "model-cache"

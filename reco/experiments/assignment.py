"""Deterministic, per-experiment salted assignment of users to experiment arms.

The config is a versioned YAML file (`experiments.yaml` at the repository root is the default; a copy is
built in as `DEFAULT_CONFIG` so that an installed package works without the file). Each experiment hashes
``sha256(f"{salt}:{user_id}")`` to a bucket in [0, 1) with 2^52 resolution and walks its arms in order: an
arm owns the interval [sum of the traffic before it, + its traffic). Because the salt is per experiment,
changing one experiment's salt reshuffles only that experiment.

>>> cfg = ExperimentConfig.model_validate(DEFAULT_CONFIG)
>>> a = assign(cfg.experiment("ranker-v2"), "user-42")
>>> a == assign(cfg.experiment("ranker-v2"), "user-42")
True
>>> a.arm in {"control", "treatment"} and 0.0 <= a.bucket < 1.0
True
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "DEFAULT_CONFIG",
    "ArmConfig",
    "Assignment",
    "ConfigError",
    "ExperimentConfig",
    "ExperimentSpec",
    "ExplorationConfig",
    "GuardrailConfig",
    "assign",
    "bucket",
    "load_config",
]

#: Tolerance on the sum of traffic shares.
TRAFFIC_TOLERANCE = 1e-9
_BUCKET_BITS = 52

#: The built-in configuration; identical to `experiments.yaml` (a test keeps them equal).
DEFAULT_CONFIG: dict[str, Any] = {
    "version": 1,
    "experiments": [
        {
            "name": "ranker-v2",
            "salt": "ranker-v2-2026-01",
            "control": "control",
            "arms": [
                {
                    "name": "control",
                    "traffic": 0.5,
                    "alias": "arm-control",
                    "exploration": {"strategy": "epsilon_greedy", "rate": 0.1},
                },
                {
                    "name": "treatment",
                    "traffic": 0.5,
                    "alias": "arm-treatment",
                    "exploration": {"strategy": "thompson", "rate": 0.2},
                },
            ],
            "guardrails": [{"metric": "revenue_per_user", "margin": 0.05}],
        }
    ],
}


class ConfigError(ValueError):
    """The experiment configuration is invalid; the message says what and where."""


_Name = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ExplorationConfig(BaseModel):
    """strategy epsilon_greedy: rate = initial epsilon; thompson: rate = weight of the Beta sample in the
    re-ranking score; none: no exploration (rate must be 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["epsilon_greedy", "thompson", "none"] = "none"
    rate: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _rate_matches_strategy(self) -> ExplorationConfig:
        if self.strategy == "none" and self.rate != 0.0:
            raise ValueError("exploration strategy 'none' takes no rate (use rate: 0)")
        return self


class ArmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = _Name
    traffic: float = Field(ge=0.0, le=1.0, allow_inf_nan=False, description="share of users, in [0, 1]")
    alias: str = Field(min_length=1, max_length=128, description="MLflow registry alias the arm serves")
    exploration: ExplorationConfig = ExplorationConfig()
    learning: Literal["online", "frozen"] = Field(
        "online", description="online: the learner refines the arm's model; frozen: it serves its version as is"
    )


class GuardrailConfig(BaseModel):
    """A metric the A/B report watches with a sequential non-inferiority test: the treatment must not be
    worse than control by more than `margin` (relative; 0.05 = 5 %)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Literal["ctr", "clicks_per_user", "purchases_per_user", "revenue_per_user"]
    margin: float = Field(0.05, ge=0.0, lt=1.0, allow_inf_nan=False)


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = _Name
    salt: str = Field(min_length=1, max_length=256)
    control: str = Field("control", description="name of the control arm")
    arms: tuple[ArmConfig, ...] = Field(min_length=1)
    guardrails: tuple[GuardrailConfig, ...] = Field((), description="A/B report guardrails and their margins")

    @model_validator(mode="after")
    def _check_arms(self) -> ExperimentSpec:
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"experiment {self.name!r}: duplicate arm names {dupes}")
        total = math.fsum(a.traffic for a in self.arms)
        if abs(total - 1.0) > TRAFFIC_TOLERANCE:
            raise ValueError(f"experiment {self.name!r}: arm traffic sums to {total!r}, expected 1")
        if self.control not in names:
            raise ValueError(f"experiment {self.name!r}: control arm {self.control!r} is not one of its arms {names}")
        return self

    def arm(self, name: str) -> ArmConfig:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"experiment {self.name!r} has no arm {name!r}")


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int | str = Field(description="bumped on every change; logged with reports")
    experiments: tuple[ExperimentSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ExperimentConfig:
        names = [e.name for e in self.experiments]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate experiment names {dupes}")
        salts = [e.salt for e in self.experiments]
        if len(set(salts)) != len(salts):
            # Shared salts would correlate the experiments' assignments.
            raise ValueError("experiments must have distinct salts")
        return self

    def experiment(self, name: str | None = None) -> ExperimentSpec:
        """The named experiment (the first one when name is None)."""
        if name is None:
            return self.experiments[0]
        for e in self.experiments:
            if e.name == name:
                return e
        raise KeyError(f"no experiment {name!r}; known: {[e.name for e in self.experiments]}")

    @property
    def aliases(self) -> dict[str, str]:
        """arm name -> registry alias over all experiments (arm names are the serving identity)."""
        return {a.name: a.alias for e in self.experiments for a in e.arms}


@dataclass(frozen=True)
class Assignment:
    experiment: str
    arm: str
    alias: str
    exploration: ExplorationConfig
    bucket: float


def bucket(salt: str, user_id: str) -> float:
    """Uniform in [0, 1) with 2^52 resolution: the top 52 bits of sha256("<salt>:<user_id>").

    >>> bucket("s", "u") == bucket("s", "u") and 0.0 <= bucket("s", "u") < 1.0
    True
    """
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> (64 - _BUCKET_BITS)) / float(1 << _BUCKET_BITS)


def assign(experiment: ExperimentSpec, user_id: str) -> Assignment:
    """The user's arm in this experiment: same user, same arm, always (for a given salt and shares)."""
    b = bucket(experiment.salt, user_id)
    edge = 0.0
    chosen = experiment.arms[-1]
    for a in experiment.arms:
        edge += a.traffic
        if b < edge and a.traffic > 0.0:
            chosen = a
            break
    if chosen.traffic == 0.0:  # only reachable through float rounding at the top edge
        chosen = next(a for a in reversed(experiment.arms) if a.traffic > 0.0)
    return Assignment(experiment.name, chosen.name, chosen.alias, chosen.exploration, b)


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def parse_config(data: Any, *, source: str = "<config>") -> ExperimentConfig:
    """Validate a loaded mapping; raises `ConfigError` with one line per problem."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid experiment config {source}:\n{_format_errors(exc)}") from None


def load_config(path: str | Path | None = None) -> ExperimentConfig:
    """Load and validate a YAML config; None -> the built-in `DEFAULT_CONFIG`."""
    if path is None:
        return parse_config(DEFAULT_CONFIG, source="<built-in>")
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read experiment config {p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"experiment config {p} is not valid YAML: {exc}") from None
    return parse_config(data, source=str(p))

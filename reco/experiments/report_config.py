"""What an A/B report compares and how: `ReportConfig`, and the experiment config's traffic shares and
guardrail margins."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from reco.experiments.reading import ReportError

#: Per-user metrics the report computes (besides CTR, the decision metric).
METRICS = ("ctr", "clicks_per_user", "purchases_per_user", "revenue_per_user")
#: Guardrail -> non-inferiority margin (relative) when neither the config nor the caller sets any.
DEFAULT_GUARDRAILS: dict[str, float] = {"revenue_per_user": 0.05}


@dataclass(frozen=True)
class ReportConfig:
    """What to compare and how. `traffic` maps arm -> configured share (None = equal shares over the arms
    seen). `guardrails` maps a metric to its non-inferiority margin (0.05: the treatment may be at most 5 %
    worse); a plain sequence of names gets the default margin 0.05. `phase` is the phase analysed (events
    with a null or missing `phase` are phase 1); `phases` lists the experiment's phases as the caller
    records them (dicts with id, started, who, why, versions {arm: version}), shown in the report."""

    control: str
    experiment: str = "default"
    start: date | None = None
    end: date | None = None
    traffic: Mapping[str, float] | None = None
    traffic_source: str | None = None  # where `traffic` came from, shown in the report
    alpha: float = 0.05
    min_days: int = 14
    planned_days: int = 28
    tau: float = 0.05  # mSPRT mixing sd, in log-ratio units (~ relative lift)
    correction: str = "holm"  # decision family: "holm" or "bh"
    power: float = 0.8
    target_relative_mde: float = 0.05
    guardrails: Mapping[str, float] | Sequence[str] = field(default_factory=lambda: dict(DEFAULT_GUARDRAILS))
    guardrails_source: str = "default"
    pre_period_days: int = 14
    experiment_start: date | None = None  # first day of the experiment (phase 1): the pre-period ends before it
    novelty_min_users: int = 100  # per arm and exposure day: fewer makes the ratio estimates too noisy
    min_segment_users: int = 30
    phase: int = 1
    phases: tuple[Mapping[str, Any], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        g = self.guardrails
        margins = dict(g) if isinstance(g, Mapping) else {m: 0.05 for m in g}
        for metric, margin in margins.items():
            if metric not in METRICS:
                raise ReportError(f"unknown guardrail metric {metric!r}; known: {', '.join(METRICS)}")
            if not 0.0 <= float(margin) < 1.0:
                raise ReportError(f"guardrail {metric}: margin must be in [0, 1), got {margin!r}")
        object.__setattr__(self, "guardrails", {m: float(v) for m, v in margins.items()})
        if self.correction not in ("holm", "bh"):
            raise ReportError(f"correction must be holm or bh, got {self.correction!r}")
        if self.phase < 1:
            raise ReportError(f"phase must be >= 1, got {self.phase}")


def config_dict(cfg: ReportConfig) -> dict[str, Any]:
    d = asdict(cfg)
    for k in ("start", "end", "experiment_start"):
        d[k] = d[k].isoformat() if d[k] else None
    return d


def parse_assignments(
    items: Sequence[str] | None, valid: Callable[[str, float], bool], error: str
) -> dict[str, float] | None:
    """Repeated `KEY=NUMBER` options -> {key: number}; ValueError(`error` + the item) when one is malformed
    or `valid(key, number)` is false. None when no item is given.

    >>> parse_assignments(["a=0.5"], lambda key, value: value > 0, "--x expects KEY=POSITIVE")
    {'a': 0.5}
    """
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, number = item.partition("=")
        try:
            value = float(number)
        except ValueError:
            sep = ""
        if not sep or not valid(key, value):
            raise ValueError(f"{error}, got {item!r}")
        out[key] = value
    return out


def parse_guardrails(items: Sequence[str] | None) -> dict[str, float] | None:
    """["revenue_per_user=0.05", "ctr=0.02"] -> {metric: margin}; ValueError on a malformed item.

    >>> parse_guardrails(["revenue_per_user=0.05"])
    {'revenue_per_user': 0.05}
    """
    return parse_assignments(
        items,
        lambda metric, margin: metric in METRICS and 0.0 <= margin < 1.0,
        f"--guardrail expects METRIC=MARGIN with METRIC one of {', '.join(METRICS)} and MARGIN in [0, 1)",
    )


def configured_experiment(
    experiment: str | None, config_path: str | Path | None = None
) -> tuple[str, dict[str, float], dict[str, float] | None, str]:
    """(experiment name, arm -> traffic share, guardrail -> margin or None when the config sets none,
    source) from the experiment config (`config_path`, None = the built-in `DEFAULT_CONFIG`); `experiment`
    None = the config's first experiment. Arms with zero traffic are left out (they serve nobody).

    >>> configured_experiment(None)[:3]
    ('ranker-v2', {'control': 0.5, 'treatment': 0.5}, {'revenue_per_user': 0.05})
    """
    from reco.experiments.assignment import ConfigError, load_config

    source = str(config_path) if config_path else "<built-in>"
    try:
        spec = load_config(config_path).experiment(experiment)
    except ConfigError as e:
        raise ReportError(str(e).replace("\n", " ")) from None
    except KeyError as e:
        raise ReportError(
            f"{e.args[0]} in the experiment config {source}: pass --traffic ARM=SHARE or --experiments PATH"
        ) from None
    traffic = {a.name: a.traffic for a in spec.arms if a.traffic > 0}
    guardrails = {g.metric: g.margin for g in spec.guardrails} if spec.guardrails else None
    return spec.name, traffic, guardrails, f"experiment config {source}"


def configured_traffic(
    experiment: str | None, config_path: str | Path | None = None
) -> tuple[str, dict[str, float], str]:
    """(experiment name, arm -> traffic share, source): `configured_experiment` without the guardrails.

    >>> configured_traffic(None)
    ('ranker-v2', {'control': 0.5, 'treatment': 0.5}, 'experiment config <built-in>')
    """
    name, traffic, _, source = configured_experiment(experiment, config_path)
    return name, traffic, source

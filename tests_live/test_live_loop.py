"""The proof of the live loop (`make live-test`): the production profile on real services runs the loop by
itself for several simulated days.

Boots `reco up --profile production` (Airflow 3 with the CeleryExecutor, PostgreSQL metadata, MLflow on
PostgreSQL, the API with 2 workers, the learner and the sink), bootstraps the first model, then for each
simulated day (past UTC days, stamped through the API's simulated-time header):

* drives a day of simulated users through the API over HTTP (0 failed requests);
* the sink wrote that day's partition: events accepted (served impressions + accepted feedback) = events
  in the lake, none twice;
* the scheduler ran `reco_training` for that logical date (a backfill of that day, `POST /api/v2/backfills`)
  on a Celery worker (every task instance has a Celery task id and our queue), on that day's lake data
  (the version's lineage names the day's validated partition), and promoted it (a new phase);
* the API hot-swapped to it while requests kept coming, none failed;
* `reco_ab_report` wrote that day's report, for the phase that ran that day, its counts equal to the lake's.

RECO_LIVE_SCALE shortens it (users and sessions per day); the days stay 3. Services: PostgreSQL and Redis
at their standard local ports (.ci/run starts them); everything this test creates (databases, Redis keys,
the Celery queue, processes) is removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import live_cleanup
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCALE = float(os.environ.get("RECO_LIVE_SCALE", "0.5"))  # 0.5: 30 users (measured, docs/benchmarks.md)
DAYS = 3
USERS = max(20, int(60 * SCALE))
SESSIONS_PER_USER_DAY = 4.0  # enough clicks per user for a leave-one-out holdout on one day
TIMINGS: dict[str, dict[str, float]] = {}


def movielens_dir() -> Path:
    """MovieLens-100k where the tests keep it (as compose-test looks), else fetched by the project's loader."""
    from reco.data.movielens import fetch_movielens

    fetched = ROOT / ".reco/data/ml-100k"
    for cand in (os.environ.get("RECO_TEST_ML100K"), os.environ.get("RECO_ML100K_DIR"),
                 ROOT.parent / "shared/data/movielens-100k", "/work/shared/data/movielens-100k",
                 Path.home() / ".cache/reco/ml-100k", fetched):  # fmt: skip
        if cand and (Path(cand) / "ml-100k.inter").is_file():
            return Path(cand).resolve()
    print(f"[live] fetching MovieLens-100k into {fetched}", flush=True)
    return fetch_movielens(fetched, progress=False).resolve()


class Recorder:
    """The simulator's API client over HTTP that keeps the books: per UTC day, impressions served and
    feedback events accepted (what the lake must hold), and every failed request."""

    def __init__(self, base_url: str, api_key: str) -> None:
        import httpx

        self._http = httpx.Client(base_url=base_url, timeout=60.0, headers={"X-API-Key": api_key})
        self.expected: Counter[date] = Counter()
        self.failures: list[str] = []
        self.requests = 0
        self._lock = threading.Lock()

    def recommend(self, user_id: str, *, session_id: str, page_type: str, context_item_id: str | None, limit: int,
                  ts: datetime) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {"user_id": user_id, "session_id": session_id, "page_type": page_type, "limit": limit}
        if context_item_id is not None:
            body["context_item_id"] = context_item_id
        r = self._http.post("/v1/recommendations", json=body, headers={"X-Reco-Event-Time": ts.isoformat()})
        with self._lock:
            self.requests += 1
            if r.status_code != 200:
                self.failures.append(f"recommend {r.status_code}: {r.text[:200]}")
                raise AssertionError(self.failures[-1])
            out = r.json()
            self.expected[ts.astimezone(UTC).date()] += len(out["items"])
        return out

    def send_events(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        payload = [{**e, "ts": e["ts"].isoformat() if isinstance(e["ts"], datetime) else e["ts"]} for e in events]
        r = self._http.post("/v1/events", json={"events": payload})
        with self._lock:
            self.requests += 1
            if r.status_code not in (200, 202):  # the API answers 202 Accepted
                self.failures.append(f"events {r.status_code}: {r.text[:200]}")
                return
            assert r.json()["duplicates"] == 0
            for e in events:  # every event of a batch is accepted (duplicates == 0)
                ts = e["ts"] if isinstance(e["ts"], datetime) else datetime.fromisoformat(e["ts"])
                self.expected[ts.astimezone(UTC).date()] += 1


def _poll(what: str, check, timeout_s: float, every_s: float = 2.0):
    """`check()` until truthy; a transient error (a timeout or reset on a loaded machine) is one more try."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # only transient ones are retried, the rest re-raised
            if not _transient(e):
                raise
            last = e
        else:
            if last:
                return last
        time.sleep(every_s)
    raise AssertionError(f"{what}: not reached after {timeout_s:.0f} s (last: {last!r})")


def _transient(e: Exception) -> bool:
    """No answer in time, or the connection dropped: not an answer (an HTTP error status is one)."""
    from reco.devstack.local_stack import AirflowError

    if isinstance(e, AirflowError):
        return "-> HTTP" not in str(e)  # raised from an OSError, no status
    return isinstance(e, OSError) and not isinstance(e, urllib.error.HTTPError)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def live(request):
    """The production profile under a private home, databases, Redis prefix and Celery queue, all named by
    one tag; removed at the end, even on SIGTERM (CI's `timeout`), and swept by the next run after SIGKILL."""
    from reco.devstack import local_stack, production
    from reco.devstack.supervisor import signals_as_interrupt

    say = lambda m: print(f"[live] {m}", flush=True)  # noqa: E731
    redis_url = os.environ.get("RECO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    broker_url = os.environ.get("AIRFLOW__CELERY__BROKER_URL", "redis://127.0.0.1:6379/1")
    live_cleanup.sweep(pg=os.environ, redis_urls=[redis_url, broker_url], say=say)
    tag = uuid.uuid4().hex[:8]
    home = live_cleanup.claim(tag)
    env = {
        **os.environ,
        "AIRFLOW_DB": f"reco_live_{tag}_airflow", "MLFLOW_DB": f"reco_live_{tag}_mlflow",
        "AIRFLOW_PORT": str(local_stack.free_port()), "MLFLOW_PORT": str(local_stack.free_port()),
        "RECO_API_PORT": str(local_stack.free_port()), "AIRFLOW_ADMIN_PASSWORD": uuid.uuid4().hex,
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": f"reco-live-{tag}", "RECO_REDIS_PREFIX": f"reco-live-{tag}",
        "RECO_REDIS_URL": redis_url, "AIRFLOW__CELERY__BROKER_URL": broker_url, "RECO_API_KEYS": f"live-{tag}",
        "RECO_DATA_DIR": str(movielens_dir()), "RECO_EXPERIMENTS_PATH": str(ROOT / "experiments.yaml"),
        "RECO_BOOTSTRAP_EPOCHS": "1", "RECO_HONOUR_EVENT_TIME_HEADER": "true", "RECO_MODEL_POLL_S": "2",
    }  # fmt: skip
    env.pop("AIRFLOW_HOME", None)  # pytest's conftest may point it at a SQLite home
    env = {
        k: v for k, v in env.items() if not k.startswith("AIRFLOW__DATABASE__") and k != "AIRFLOW__CORE__DAGS_FOLDER"
    }
    say(f"run {tag}: home {home}")
    t0 = time.monotonic()
    with signals_as_interrupt():  # SIGTERM / SIGHUP: the same cleanup as Ctrl-C
        try:
            info = production.up(home, environ=env, dags_wait_s=600, say=say)
            TIMINGS["boot"] = {"s": time.monotonic() - t0}
            yield info, tag, env
        finally:
            failed = request.session.testsfailed or not TIMINGS.get("boot")
            if failed:
                _print_logs(home)
            local_stack.down(home)
            live_cleanup.remove(tag, pg=env, redis_urls=[redis_url, broker_url])
            if not failed:  # a failed run keeps its logs until the next run's sweep
                shutil.rmtree(home, ignore_errors=True)
            (ROOT / "build").mkdir(exist_ok=True)
            (ROOT / "build" / "live_loop_timings.json").write_text(json.dumps(TIMINGS, indent=1))


def _print_logs(home: Path, n_chars: int = 2500) -> None:
    """The end of every service's log and of the latest Airflow task logs: what CI shows of a failed run."""
    from reco.devstack.local_stack import tail

    task_logs = sorted((home / "airflow-production/logs").glob("dag_id=*/**/*.log"), key=lambda p: p.stat().st_mtime)
    for path in [*sorted((home / "logs").glob("*.log")), *task_logs[-3:]]:
        print(f"----- {path}\n{tail(path, n_chars)}", flush=True)


def _celery_ran(env: dict[str, str], dag_id: str, run_id: str) -> list[tuple[str, str, str | None, str]]:
    """(task_id, state, Celery task id, queue) of every task instance of a run, from Airflow's metadata DB."""
    import psycopg2

    conn = psycopg2.connect(host=env.get("POSTGRES_HOST", "127.0.0.1"), port=int(env.get("POSTGRES_PORT", 5432)),
                            user=env.get("POSTGRES_USER", "postgres"), dbname=env["AIRFLOW_DB"])  # fmt: skip
    with conn.cursor() as cur:
        cur.execute("SELECT task_id, state, external_executor_id, queue FROM task_instance "
                    "WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))  # fmt: skip
        rows = cur.fetchall()
    conn.close()
    return rows


def _backfill_day(client, dag_id: str, day: date, conf: dict[str, Any]) -> str:
    """`POST /api/v2/backfills` for one day; the scheduler creates and runs it. Returns the run id."""
    from reco.devstack.local_stack import AirflowError

    stamp = f"{day.isoformat()}T00:00:00Z"
    body = {"dag_id": dag_id, "from_date": stamp, "to_date": stamp, "reprocess_behavior": "completed",
            "max_active_runs": 1, "dag_run_conf": conf}  # fmt: skip

    def run_of_day():
        runs = client._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
        return next((r for r in runs if r.get("logical_date", "").startswith(day.isoformat())
                     and r.get("run_type") == "backfill"), None)  # fmt: skip

    def created():  # the previous day's backfill is marked complete by a later scheduler loop: 409 until then
        if run_of_day():  # a POST whose answer was lost did create it
            return True
        try:
            return client._request("POST", "/api/v2/backfills", body) or True
        except AirflowError as e:
            if "409" not in str(e):
                raise
            return None

    _poll(f"backfill of {dag_id} {day}", created, 300, every_s=3)

    run = _poll(f"{dag_id} backfill run of {day}", run_of_day, 120)
    run_id = run["dag_run_id"]

    def finished():
        state = client.run_state(dag_id, run_id)
        return state if state in ("success", "failed") else None

    assert _poll(f"{dag_id} {day}", finished, 1200, every_s=3) == "success", f"{dag_id} run {run_id} failed"
    return run_id


def test_the_loop_runs_by_itself_day_after_day(live):
    import pyarrow.compute as pc

    from reco.artifacts import registry
    from reco.data.lake import EventLake
    from reco.experiments.assignment import load_config
    from reco.experiments.phases import experiment_phases, phase_at
    from reco.sim.ground_truth import GroundTruth
    from reco.sim.users import simulate_days

    info, tag, test_env = live
    env, home = info.env, info.home
    af = info.airflow_client()
    mlflow = registry.client_for(info.mlflow_url)
    model = os.environ.get("RECO_REGISTERED_MODEL", "reco-ranker")
    experiment = load_config(ROOT / "experiments.yaml").experiment().name
    lake, validated = EventLake(home / "lake"), EventLake(home / "validated")
    gt = GroundTruth.fit(Path(env["RECO_DATA_DIR"]))
    rec = Recorder(info.api_url, info.api_key)
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=DAYS + 1 - i) for i in range(DAYS)]  # past days; yesterday stays free
    pool = [str(u) for u in gt.users[:USERS]]
    queue = env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    conf = {"epochs": 1, "gate_margin": 1.0, "offpolicy_gate": False}  # the test's policy: promote what passes
    for i, day in enumerate(days):
        t_day, timing = time.monotonic(), {}
        # 1. a day of traffic over HTTP, stamped with the simulated time
        simulate_days(rec, gt, users=USERS, days=1, start_day=day, sessions_per_user_day=SESSIONS_PER_USER_DAY,
                      seed=1400 + i, user_ids=pool)  # fmt: skip
        assert rec.failures == [], rec.failures[:5]
        timing["traffic_s"] = time.monotonic() - t_day
        # 2. the sink landed it: accepted = in the lake, none twice
        t = time.monotonic()
        _poll(f"lake partition {day}", lambda d=day: lake.count_rows(d, d) >= rec.expected[d], 300)
        ids = lake.read(day, day, columns=["event_id"]).column("event_id")
        assert len(ids) == rec.expected[day] and pc.count_distinct(ids).as_py() == len(ids)
        timing["sink_s"], timing["events"] = time.monotonic() - t, rec.expected[day]
        # 3. the scheduler runs reco_training for the day on a Celery worker
        t = time.monotonic()
        before = experiment_phases(info.mlflow_url, model, experiment, ROOT / "experiments.yaml")
        run_id = _backfill_day(af, "reco_training", day, conf)
        tis = _celery_ran(test_env, "reco_training", run_id)
        assert tis and all(s == "success" and ext and q == queue for _, s, ext, q in tis), tis
        timing["training_s"] = time.monotonic() - t
        # 4. a version with lineage to the day's validated partition, promoted into the arm: a new phase
        mv = registry.alias_version(mlflow, model, "arm-treatment")
        assert mv.tags["data_snapshot_id"] == validated.snapshot_id(day, day)
        assert int(mv.tags["data_rows"]) == validated.count_rows(day, day) > 0
        after = experiment_phases(info.mlflow_url, model, experiment, ROOT / "experiments.yaml")
        assert len(after) > len(before) and after[-1]["versions"]["treatment"] == str(mv.version)
        assert after[-1]["started"][:10] == (day + timedelta(days=1)).isoformat()
        # 5. the API hot-swaps to it while requests keep coming (stamped at the start of the next day)
        t, stop = time.monotonic(), threading.Event()
        start_failures = len(rec.failures)

        def keep_asking(d=day, stop=stop, session=f"swap-{tag}-{i}"):
            n = 0
            while not stop.is_set():
                ts = datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=1, seconds=n)
                with contextlib.suppress(AssertionError):  # counted in rec.failures, checked below
                    rec.recommend(pool[n % len(pool)], session_id=session, page_type="home",
                                  context_item_id=None, limit=10, ts=ts)  # fmt: skip
                n += 1

        asker = threading.Thread(target=keep_asking, daemon=True)
        asker.start()
        try:
            _poll("API serving the new version", lambda v=str(mv.version): _get_json(f"{info.api_url}/readyz")
                  ["arms"].get("treatment") == v, 180, every_s=1)  # fmt: skip
            time.sleep(2)
        finally:
            stop.set()
            asker.join(timeout=60)
        assert rec.failures[start_failures:] == []
        timing["swap_s"] = time.monotonic() - t
        # 6. reco_ab_report for the day: the phase that ran that day, counts equal to the lake's
        t = time.monotonic()
        _backfill_day(af, "reco_ab_report", day, {})
        report = json.loads((home / "reports" / experiment / f"{day.isoformat()}.json").read_text())
        phase = phase_at(after, day) or 1
        assert report["phase"]["id"] == phase
        frame = lake.read_pandas(None, day)
        imps = frame[(frame["event_type"] == "impression") & frame["arm"].notna()]
        imps = imps[imps["phase"].fillna(1).astype(int) == phase]
        for arm, a in report["arms"].items():
            assert a["impressions"] == int((imps["arm"] == arm).sum()), (arm, a["impressions"])
        timing["report_s"] = time.monotonic() - t
        timing["day_s"] = time.monotonic() - t_day
        TIMINGS[day.isoformat()] = timing
        print(f"[live] day {i + 1} {day}: {timing}", flush=True)

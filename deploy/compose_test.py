"""`make compose-test`: build the images offline, boot docker-compose.yml for real and check it end to end.

    up -d -> every healthcheck healthy -> bootstrap model in the registry -> one recommendation and one
    event batch through the proxy -> trigger reco_training over Airflow's REST API v2 -> it succeeds on the
    celery worker -> MLflow shows the new version under the arm's alias -> the API serves it -> down -v.

Runs as its own compose project (`recotest`) on its own host ports, so a developer's stack is untouched.
Starts dockerd when it is not running (and stops what it started). Prints one timestamped line per step.
Standard library only (runs with the system python3). Exit status 0 = every check passed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = os.environ.get("RECO_COMPOSE_PROJECT", "recotest")
PORTS = {"RECO_API_PORT": "18000", "MLFLOW_PORT": "15000", "AIRFLOW_PORT": "18080", "PROMETHEUS_PORT": "19090"}
API = f"http://127.0.0.1:{PORTS['RECO_API_PORT']}"
MLFLOW = f"http://127.0.0.1:{PORTS['MLFLOW_PORT']}"
AIRFLOW = f"http://127.0.0.1:{PORTS['AIRFLOW_PORT']}"
PROMETHEUS = f"http://127.0.0.1:{PORTS['PROMETHEUS_PORT']}"
API_KEY = "compose-test-key"
ADMIN = ("admin", "compose-test-admin")
MODEL = "reco-ranker"
ARM = "treatment"
T0 = time.monotonic()


def say(msg: str) -> None:
    el = int(time.monotonic() - T0)
    print(f"[compose-test {el // 60:2d}:{el % 60:02d}] {msg}", flush=True)


class Failed(Exception):
    pass


# --------------------------------------------------------------------------- plumbing


def run(*cmd: str, check: bool = True, capture: bool = False, timeout: float = 1800) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=capture, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise Failed(f"{' '.join(cmd[:6])} ... exited {out.returncode}: {(out.stderr or '')[-2000:]}")
    return out


def compose(*args: str, **kw) -> subprocess.CompletedProcess:
    return run("docker-compose", "-p", PROJECT, "--env-file", str(ENV_FILE), "-f", "docker-compose.yml", *args, **kw)


def http(method: str, url: str, body=None, headers=None, timeout: float = 30):
    """(status, parsed JSON or text); connection errors -> (0, reason)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode(errors="replace"), e.code
    except (OSError, ValueError) as e:
        return 0, str(e)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def poll(what: str, check, timeout_s: float, every_s: float = 5.0):
    """Call `check()` until it returns a truthy value; Failed after timeout_s."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            got = check()
        except Failed as e:
            got, last = None, str(e)
        if got:
            return got
        time.sleep(every_s)
    raise Failed(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f" ({last})" if last else ""))


# --------------------------------------------------------------------------- steps


def ensure_dockerd() -> subprocess.Popen | None:
    if run("docker", "info", check=False, capture=True).returncode == 0:
        return None
    say("starting dockerd (logs: /tmp/reco-dockerd.log)")
    with open("/tmp/reco-dockerd.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT)
    poll("dockerd", lambda: run("docker", "info", check=False, capture=True).returncode == 0, 60, 1)
    return proc


def movielens_dir() -> str:
    fetched = ROOT / ".reco/data/ml-100k"
    for cand in (os.environ.get("RECO_ML100K_DIR"), str(ROOT.parent / "shared/data/movielens-100k"),
                 "/work/shared/data/movielens-100k", str(Path.home() / ".cache/reco/ml-100k"),
                 str(fetched)):  # fmt: skip
        if cand and (Path(cand) / "ml-100k.inter").is_file():
            return str(Path(cand).resolve())
    say("fetching MovieLens-100k (reco data fetch)")
    run(str(ROOT / ".venv/bin/reco"), "data", "fetch", "movielens-100k", "--dest", str(fetched), "--quiet")
    return str(fetched.resolve())


def write_env() -> None:
    from_example = (ROOT / ".env.example").read_text()
    fernet = base64.urlsafe_b64encode(os.urandom(32)).decode()
    overrides = {
        "POSTGRES_PASSWORD": "compose-test-pg", "RECO_API_KEYS": API_KEY, "AIRFLOW_FERNET_KEY": fernet,
        "AIRFLOW_JWT_SECRET": "compose-test-jwt", "AIRFLOW_ADMIN_USER": ADMIN[0], "AIRFLOW_ADMIN_PASSWORD": ADMIN[1],
        "RECO_ML100K_DIR": movielens_dir(), "RECO_BOOTSTRAP_EPOCHS": "1", "RECO_MODEL_POLL_S": "5",
        "RECO_WORKERS": "1", "RECO_ACCESS_LOG": "true", "RECO_PYTHON_BASE_IMAGE": "reco-base:bookworm", **PORTS,
    }  # fmt: skip
    lines = [ln for ln in from_example.splitlines() if ln.split("=", 1)[0] not in overrides]
    ENV_FILE.parent.mkdir(parents=True, exist_ok=True)
    ENV_FILE.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in overrides.items())]) + "\n")


def service_states() -> dict[str, tuple[str, str]]:
    """container name -> (state, health) for every container of the project."""
    ids = compose("ps", "-q", capture=True).stdout.split()
    if not ids:
        return {}
    fmt = "{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} {{.State.ExitCode}}"
    out = run("docker", "inspect", "-f", fmt, *ids, capture=True).stdout.split("\n")
    states = {}
    for line in filter(None, out):
        name, state, health, code = line.split()
        states[name.lstrip("/")] = (state, health, int(code))
    return states


def wait_healthy(timeout_s: float) -> None:
    one_shot = ("airflow-init", "bootstrap")
    reported: set[str] = set()

    def check():
        states = service_states()
        for name, (state, _health, code) in states.items():
            if any(f"_{s}_" in name for s in one_shot) and state == "exited" and code != 0:
                raise Failed(f"{name} exited with {code}")
        pending = sorted(n for n, (_st, h, _c) in states.items()
                         if not any(f"_{s}_" in n for s in one_shot) and h != "healthy")  # fmt: skip
        for n, (_st, h, _c) in states.items():
            if h == "healthy" and n not in reported:
                reported.add(n)
                say(f"  healthy: {n}")
        return bool(states) and not pending

    poll("every healthcheck to pass", check, timeout_s, 5)


def bootstrap_done() -> dict:
    name = next((n for n in service_states() if f"{PROJECT}_bootstrap_" in n), None)
    if name is None:
        raise Failed("no bootstrap container")
    logs = run("docker", "logs", name, capture=True).stdout.strip().splitlines()
    result = json.loads(next(line for line in reversed(logs) if line.startswith("{")))
    return result


def alias_version(alias: str) -> str | None:
    status, body = http("GET", f"{MLFLOW}/api/2.0/mlflow/registered-models/alias?name={MODEL}&alias={alias}")
    return str(body["model_version"]["version"]) if status == 200 else None


def served_versions() -> dict:
    status, body = http("GET", f"{API}/readyz")
    return body.get("arms", {}) if status == 200 and isinstance(body, dict) else {}


def recommend_and_send_events() -> None:
    req = {"user_id": "compose-u1", "session_id": "compose-s1", "page_type": "product", "context_item_id": "50",
           "limit": 5}  # fmt: skip
    status, body = http("POST", f"{API}/v1/recommendations", req, {"X-Request-ID": "compose-test-1"})
    if status != 200 or len(body.get("items", [])) != 5:
        raise Failed(f"recommendation: {status} {body}")
    say(f"  recommendation: {[i['item_id'] for i in body['items']]} from arm {body['experiment_group']} "
        f"(model v{body['model_version']}, {body['latency_ms']:.1f} ms)")  # fmt: skip
    first = body["items"][0]
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    events = [
        {"event_id": "compose-e1", "ts": ts, "user_id": "compose-u1", "session_id": "compose-s1", "item_id": "50",
         "event_type": "view"},
        {"event_id": "compose-e2", "ts": ts, "user_id": "compose-u1", "session_id": "compose-s1",
         "item_id": first["item_id"], "event_type": "click", "request_id": body["request_id"],
         "position": first["position"], "arm": body["experiment_group"]},
    ]  # fmt: skip
    status, accepted = http("POST", f"{API}/v1/events", {"events": events}, {"X-API-Key": API_KEY})
    if status != 202 or accepted.get("accepted") != 2:
        raise Failed(f"events: {status} {accepted}")
    say(f"  event batch: {accepted}")


def check_scale_out() -> None:
    """`--scale api=2`: no port clash, and the proxy spreads requests over both replicas (access log)."""
    say("docker-compose up -d --scale api=2")
    compose("up", "-d", "--no-build", "--no-recreate", "--scale", "api=2", "api")
    poll("two healthy api replicas", lambda: sum(1 for n, (_s, h, _c) in service_states().items()
                                                 if f"{PROJECT}_api_" in n and h == "healthy") == 2, 600)  # fmt: skip
    poll("the proxy to answer", lambda: http("GET", f"{API}/readyz")[0] == 200, 120, 2)
    for i in range(12):
        http("GET", f"{API}/healthz", headers={"X-Request-ID": f"compose-scale-{i}"})
    names = [n for n in service_states() if f"{PROJECT}_api_" in n]
    served = {n: run("docker", "logs", n, capture=True).stderr.count("compose-scale-") for n in names}
    if len(served) != 2 or not all(served.values()):
        raise Failed(f"the proxy did not spread requests over both replicas: {served}")
    say(f"  requests per replica: {served}")


def airflow_token() -> str:
    status, body = http("POST", f"{AIRFLOW}/auth/token", {"username": ADMIN[0], "password": ADMIN[1]})
    if status not in (200, 201):
        raise Failed(f"airflow login: {status} {body}")
    return body["access_token"]


def trigger_training(token: str, since: str) -> str:
    auth = {"Authorization": f"Bearer {token}"}
    poll("reco_training to be parsed", lambda: http("GET", f"{AIRFLOW}/api/v2/dags/reco_training", None, auth)[0]
         == 200, 600, 5)  # fmt: skip
    conf = {"source": "files", "start": "1998-03-01", "end": "1998-03-07", "arm": ARM, "epochs": 1,
            "gate_margin": 1.0, "offpolicy_gate": False}  # fmt: skip
    # Triggered while the DAG is still paused (new DAGs start paused); unpausing also queues the latest daily
    # interval, which wait_run fails so that this run goes first (max_active_runs=1).
    status, body = http("POST", f"{AIRFLOW}/api/v2/dags/reco_training/dagRuns",
                        {"logical_date": None, "conf": conf, "dag_run_id": f"compose-test-{since}"}, auth)  # fmt: skip
    if status not in (200, 201):
        raise Failed(f"trigger reco_training: {status} {body}")
    run_id = body["dag_run_id"]
    status, body = http("PATCH", f"{AIRFLOW}/api/v2/dags/reco_training", {"is_paused": False}, auth)
    if status != 200:
        raise Failed(f"unpause reco_training: {status} {body}")
    return run_id


def wait_run(token: str, run_id: str, timeout_s: float) -> list[dict]:
    auth = {"Authorization": f"Bearer {token}"}
    seen: dict[str, str] = {}

    def check():
        # Unpausing the daily DAG also queued its latest interval (max_active_runs=1): that run has no
        # MovieLens data and would retry for minutes before ours starts, so it is failed here.
        _, runs = http("GET", f"{AIRFLOW}/api/v2/dags/reco_training/dagRuns?state=queued&state=running", None, auth)
        for other in runs.get("dag_runs", []) if isinstance(runs, dict) else []:
            if other["dag_run_id"] != run_id and other["run_type"] == "scheduled":
                url = f"{AIRFLOW}/api/v2/dags/reco_training/dagRuns/{other['dag_run_id']}"
                if http("PATCH", url, {"state": "failed"}, auth)[0] == 200:
                    say(f"  failed the scheduled run {other['dag_run_id']} (no data for today)")
        _, run_ = http("GET", f"{AIRFLOW}/api/v2/dags/reco_training/dagRuns/{run_id}", None, auth)
        _, tis = http("GET", f"{AIRFLOW}/api/v2/dags/reco_training/dagRuns/{run_id}/taskInstances", None, auth)
        for ti in (tis or {}).get("task_instances", []) if isinstance(tis, dict) else []:
            if seen.get(ti["task_id"]) != ti["state"] and ti["state"]:
                seen[ti["task_id"]] = ti["state"]
                say(f"  task {ti['task_id']}: {ti['state']} on {ti.get('hostname') or '?'}")
        state = run_.get("state") if isinstance(run_, dict) else None
        if state == "failed":
            raise RuntimeError(f"reco_training run {run_id} failed: {seen}")
        return tis["task_instances"] if state == "success" else None

    return poll(f"reco_training run {run_id} to succeed", check, timeout_s, 10)


def main() -> int:
    global ENV_FILE
    ENV_FILE = ROOT / ".cache" / "compose-test.env"
    if not shutil.which("docker-compose"):
        print("error: docker-compose missing (make tools)", file=sys.stderr)
        return 2
    dockerd = ensure_dockerd()
    started_stack = False
    try:
        if os.environ.get("RECO_COMPOSE_TEST_BUILD", "1") == "0":  # re-running against images just built
            say("using the images as built (RECO_COMPOSE_TEST_BUILD=0)")
        else:
            say("building images (offline: Debian base image + host wheelhouse, cached)")
            t = time.monotonic()
            run(str(ROOT / "deploy/build-images.sh"))
            say(f"images built in {time.monotonic() - t:.0f} s")
        write_env()
        compose("down", "-v", "--remove-orphans", check=False, capture=True)
        say("docker-compose up -d (bootstrap trains the first model before the learner starts)")
        started_stack = True
        t = time.monotonic()
        compose("up", "-d", "--no-build")
        say(f"up -d returned after {time.monotonic() - t:.0f} s")
        wait_healthy(900)
        boot = bootstrap_done()
        say(f"bootstrap: {boot}")
        first = alias_version(f"arm-{ARM}")
        if first is None or alias_version("champion") is None:
            raise Failed("bootstrap left no champion / arm alias in MLflow")
        again = compose("run", "--rm", "-T", "bootstrap", capture=True).stdout.strip().splitlines()[-1]
        if json.loads(again)["trained"]:
            raise Failed(f"bootstrap is not idempotent: {again}")
        say(f"bootstrap again (idempotent): {again}")
        poll("the API to serve the bootstrap model", lambda: served_versions().get(ARM) == first, 300)
        recommend_and_send_events()
        token = airflow_token()
        run_id = trigger_training(token, str(int(time.time())))
        say(f"triggered reco_training ({run_id}) over REST v2; waiting for the celery worker")
        tis = wait_run(token, run_id, 1200)
        workers = {ti.get("hostname") for ti in tis if ti["state"] == "success"}
        worker_ids = set(compose("ps", "-q", "airflow-worker", capture=True).stdout.split())
        if not workers or not all(any(w and cid.startswith(w) for cid in worker_ids) for w in workers):
            raise Failed(f"tasks ran on {workers}, not on the celery worker containers {worker_ids}")
        new = alias_version(f"arm-{ARM}")
        if new is None or int(new) <= int(first):
            raise Failed(f"arm-{ARM} still at {new} after training (bootstrap version {first})")
        say(f"MLflow: arm-{ARM} moved v{first} -> v{new}")

        poll(f"the API to serve v{new} on arm {ARM}", lambda: served_versions().get(ARM) == new, 300)
        say(f"API swapped arm {ARM} to v{new}")
        check_scale_out()
        status, targets = http("GET", f"{PROMETHEUS}/api/v1/targets")
        up = (
            sorted({t["labels"]["job"] for t in targets["data"]["activeTargets"] if t["health"] == "up"})
            if status == 200
            else []
        )
        say(f"prometheus targets up: {up}")
        say("PASSED")
        return 0
    except (Failed, RuntimeError, subprocess.TimeoutExpired) as e:
        say(f"FAILED: {e}")
        if started_stack:
            print(compose("ps", check=False, capture=True).stdout)
            print(compose("logs", "--tail", "40", check=False, capture=True).stdout[-20000:])
        return 1
    finally:
        if started_stack:
            say("docker-compose down -v")
            compose("down", "-v", "--remove-orphans", check=False, capture=True)
        if dockerd is not None:
            dockerd.send_signal(signal.SIGTERM)
            dockerd.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())

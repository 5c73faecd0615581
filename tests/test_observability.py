"""Observability of the stack: HTTP metrics per route and status, request ids in JSON logs and responses,
the access-log switch, the sink's figures; Prometheus config + alert rules and the Grafana dashboard +
provisioning files are well-formed and name metrics the code exports."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from reco.telemetry import logs

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
EXPORTED = re.compile(r"\breco_[a-z_]+")


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _capture_access_log() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("json", stream=stream, logger_name="reco.access")
    return stream


def _release_access_log() -> None:
    logger = logging.getLogger("reco.access")
    logger.handlers.clear()
    logger.propagate = True


def test_http_metrics_per_route_and_status_and_request_id(tmp_path, redis_url, redis_prefix) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from tests.serving_helpers import serving_settings

    settings = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, access_log=True)
    stream = _capture_access_log()
    try:
        with TestClient(create_app(settings)) as client:
            ok = client.get("/healthz", headers={"X-Request-ID": "req-42"})
            missing = client.get("/no/such/path")
            bad = client.post("/v1/recommendations", content=b"{not json", headers={"Content-Type": "application/json"})
            body = client.get("/metrics").text
    finally:
        _release_access_log()
    assert ok.headers["x-request-id"] == "req-42"
    assert re.fullmatch(r"[0-9a-f]{32}", missing.headers["x-request-id"])
    assert bad.status_code == 422
    families = _families(body)
    counts = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["reco_http_requests"]
        if s.name == "reco_http_requests_total"
    }
    assert counts[("/healthz", "200")] == 1
    assert counts[("other", "404")] == 1  # unmatched paths never become labels
    assert counts[("/v1/recommendations", "422")] == 1
    latency = [s for s in families["reco_http_request_duration_seconds"] if s.name.endswith("_count")]
    assert {(s.labels["route"], s.labels["status"]) for s in latency} >= {("/healthz", "200"), ("other", "404")}
    shares = {s.labels["arm"]: s.value for s in families["reco_arm_expected_share"]}
    assert shares == {"control": 0.5, "treatment": 0.5}
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    healthz = next(line for line in lines if line["route"] == "/healthz")
    assert healthz["request_id"] == "req-42" and healthz["status"] == 200 and healthz["method"] == "GET"


def test_an_unhandled_error_answers_the_documented_500_with_the_request_id(tmp_path, redis_url, redis_prefix) -> None:
    """An exception no handler takes: 500 {"detail": "internal error"}, the X-Request-ID header, the traceback's log
    line under the request id, and the 500 counted for its route."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from tests.serving_helpers import serving_settings

    app = create_app(serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("kaboom")

    logged: list[tuple[str, str | None, bool]] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append((record.getMessage(), logs.request_id.get(), record.exc_info is not None))

    grab = Grab()
    logging.getLogger("serving.errors").addHandler(grab)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.get("/boom", headers={"X-Request-ID": "req-500"})
            body = client.get("/metrics").text
    finally:
        logging.getLogger("serving.errors").removeHandler(grab)
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    assert r.headers["x-request-id"] == "req-500"
    assert ("unhandled error on GET /boom", "req-500", True) in logged
    counts = {(s.labels["route"], s.labels["status"]): s.value for s in _families(body)["reco_http_requests"]
              if s.name == "reco_http_requests_total"}  # fmt: skip
    assert counts[("/boom", "500")] == 1


def test_generated_request_ids_are_unique_tokens() -> None:
    from serving.observability import incoming_request_id

    ids = {incoming_request_id({"headers": [(b"x-request-id", b"not a token")]}) for _ in range(1000)}
    assert len(ids) == 1000 and all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids)


def test_access_log_is_off_by_default(tmp_path, redis_url, redis_prefix) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from tests.serving_helpers import serving_settings

    settings = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix)
    assert settings.access_log is False
    stream = _capture_access_log()
    try:
        with TestClient(create_app(settings)) as client:
            assert client.get("/healthz").status_code == 200
    finally:
        _release_access_log()
    assert stream.getvalue() == ""


def test_sink_service_drains_and_reports_lag(tmp_path, redis_url, redis_prefix) -> None:
    import redis

    from reco.data.events import Event
    from reco.data.lake import EventLake
    from reco.state.sink_service import SinkTotals, last_beat, run_sink
    from reco.state.store import RedisStore, connect
    from reco.telemetry.exposition import format_flat

    store = RedisStore(connect(redis_url, socket_timeout=5.0), redis_prefix)
    store.ingest([
        Event.model_validate({"event_id": f"e{i}", "ts": "2026-01-01T10:00:00Z", "user_id": "u1",
                              "item_id": str(i), "event_type": "view"})
        for i in range(5)
    ])  # fmt: skip
    rounds = {"n": 0}

    def stop() -> bool:
        rounds["n"] += 1
        return rounds["n"] > 2

    totals = run_sink(store, EventLake(tmp_path / "lake"), block_ms=10, stop=stop, totals=SinkTotals())
    assert totals.appended == 5 and totals.errors == 0 and totals.lag + totals.pending == 0
    assert last_beat(redis.Redis.from_url(redis_url), redis_prefix, "sink-service") is not None
    figures = _families(format_flat(totals.metrics()))
    assert figures["reco_sink_events_appended_total"][0].value == 5
    assert figures["reco_sink_lag_entries"][0].value == 0


# --------------------------------------------------------------------------- Prometheus + Grafana files


def _code_metric_names() -> set[str]:
    """Metric names the code can export (literal names in reco/ and serving/), with the series names
    prometheus_client derives from a declared counter / histogram."""
    names: set[str] = set()
    for path in [*ROOT.glob("reco/**/*.py"), *ROOT.glob("serving/*.py")]:
        names |= set(EXPORTED.findall(path.read_text()))
    return names | {f"{n}{s}" for n in names for s in ("_total", "_bucket", "_count", "_sum")}


def test_prometheus_config_scrapes_api_learner_and_sink() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"api", "learner", "sink"}
    assert jobs["api"]["dns_sd_configs"][0]["names"] == ["api"]  # every replica of --scale api=N
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert compose["learner"]["command"][-2:] == ["--metrics-port", "9100"]
    assert compose["sink"]["command"][-2:] == ["--metrics-port", "9101"]
    assert jobs["learner"]["static_configs"][0]["targets"] == ["learner:9100"]
    assert jobs["sink"]["static_configs"][0]["targets"] == ["sink:9101"]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_alert_rules_cover_p99_5xx_lag_srm_and_name_real_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    flat = [r for g in rules["groups"] for r in g["rules"]]
    for r in flat:
        assert set(r) >= {"alert", "expr", "labels", "annotations"} and r["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", r.get("for", "0s"))
    text = " ".join(r["expr"] for r in flat)
    assert "histogram_quantile(0.99" in text and 'status=~"5.."' in text
    named = set(EXPORTED.findall(text))
    assert {"reco_learner_lag_entries", "reco_sink_lag_entries", "reco_arm_expected_share"} <= named
    assert named <= _code_metric_names()
    promtool = shutil.which("promtool")
    if promtool:  # Debian's prometheus package on the host: the real check too (the image build runs it)
        out = subprocess.run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                             capture_output=True, text=True, check=False)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_dashboard_and_provisioning() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    dash_prov = yaml.safe_load((prov / "dashboards" / "reco.yml").read_text())
    assert dash_prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "reco.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(t["datasource"]["uid"] == ds["uid"] for p in panels for t in p["targets"])
    titles = " | ".join(p["title"].lower() for p in panels)
    for wanted in ("latency", "5xx", "ctr", "exploration", "learner lag", "sink lag", "model version", "snapshot"):
        assert wanted in titles, wanted
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    assert set(EXPORTED.findall(exprs)) <= _code_metric_names()


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_config_for_uvicorn_workers(fmt) -> None:
    import logging.config

    cfg = logs.dict_config(fmt)
    logging.config.dictConfig({**cfg, "root": {"handlers": [], "level": "WARNING"}})  # accepted by dictConfig
    assert cfg["loggers"]["uvicorn.access"]["propagate"] is True
    assert cfg["handlers"]["default"]["formatter"] == "default"


def test_clicks_per_arm_count_accepted_batches_once() -> None:
    from reco.data.events import Event
    from serving.metrics import Metrics

    def ev(i: int, kind: str, arm: str | None) -> Event:
        return Event.model_validate({"event_id": f"c{i}", "ts": "2026-01-01T10:00:00Z", "user_id": "u",
                                     "item_id": "1", "event_type": kind, "arm": arm})  # fmt: skip

    m = Metrics()
    m.clicks_observed([ev(1, "click", "control"), ev(2, "click", "treatment"), ev(3, "view", "control")], 0)
    m.clicks_observed([ev(4, "click", "control"), ev(5, "click", None)], 0)
    m.clicks_observed([ev(1, "click", "control")], 1)  # a retried batch: not counted again
    body, _ = m.render()
    clicks = {s.labels["arm"]: s.value for s in _families(body.decode())["reco_clicks"] if s.name.endswith("_total")}
    assert clicks == {"control": 2.0, "treatment": 1.0}

"""Security properties of the API and the local stack, each asserted on real behaviour (or, for "how is
the code written" properties, on the parsed source): API keys, limits, CORS, no unpickling of model
weights, loopback-only embedded services, generated Airflow admin password."""

from __future__ import annotations

import ast
import inspect
import io
import logging
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from reliability_helpers import event, static_source
from serving_helpers import serving_settings, tiny_bundle

from serving.app import create_app

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-Key-7f1c9a2b-do-not-log"
WRONG = "wr0ng-Key-33aa-do-not-log-either"


@pytest.fixture
def settings(tmp_path, redis_url: str, redis_prefix: str):
    return serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, api_keys=["other", SECRET])


def _client(settings) -> TestClient:
    return TestClient(create_app(settings, model_source=static_source()), raise_server_exceptions=False)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with _client(settings) as c:
        yield c


# --------------------------------------------------------------------------- API keys


def test_api_key_check_uses_constant_time_compare_only() -> None:
    from serving import middleware

    tree = ast.parse(inspect.getsource(middleware.require_api_key))
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "hmac.compare_digest" in calls
    # No `==`, `in` or `!=` on the presented key: those exit at the first differing byte.
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            assert not names & {"x_api_key", "given", "key"}, ast.unparse(node)


@pytest.mark.integration
def test_api_keys_gate_ingest_and_are_never_logged_or_echoed(client: TestClient, settings, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level: the server logs nothing with the key
    batch = {"events": [event("sec-1")]}
    ok = client.post("/v1/events", json=batch, headers={"X-API-Key": SECRET})
    assert ok.status_code == 202, ok.text
    wrong = client.post("/v1/events", json=batch, headers={"X-API-Key": WRONG})
    assert wrong.status_code == 403
    prefix = client.post("/v1/events", json=batch, headers={"X-API-Key": SECRET[:-1]})
    assert prefix.status_code == 403  # a prefix of a valid key is not a valid key
    missing = client.post("/v1/events", json=batch)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "ApiKey"
    bad_body = client.post("/v1/events", json={"events": [{"bogus": 1}]}, headers={"X-API-Key": SECRET})
    assert bad_body.status_code == 422
    metrics = client.get("/metrics").text
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    for text in (logged, metrics, wrong.text, prefix.text, missing.text, bad_body.text):
        assert SECRET not in text and WRONG not in text
    # Settings keep keys as secrets: neither repr nor a JSON dump reveals them.
    assert SECRET not in repr(settings) and SECRET not in settings.model_dump_json()


@pytest.mark.integration
def test_no_configured_key_means_ingest_closed(tmp_path, redis_url: str, redis_prefix: str) -> None:
    s = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, api_keys=[])
    with _client(s) as c:
        for key in ("", "x", "test-key"):
            r = c.post("/v1/events", json={"events": [event("closed")]}, headers={"X-API-Key": key} if key else {})
            assert r.status_code in (401, 403), (key, r.status_code)


def test_api_keys_come_from_the_environment(monkeypatch) -> None:
    from serving.settings import Settings

    monkeypatch.setenv("RECO_API_KEYS", '["k-env-1", "k-env-2"]')
    assert [k.get_secret_value() for k in Settings().api_keys] == ["k-env-1", "k-env-2"]
    monkeypatch.delenv("RECO_API_KEYS")
    defaults = Settings()
    assert defaults.api_keys == [] and defaults.require_api_key and defaults.cors_origins == []


# --------------------------------------------------------------------------- limits


@pytest.mark.integration
def test_body_and_batch_limits(tmp_path, redis_url: str, redis_prefix: str) -> None:
    s = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, api_keys=[SECRET],
                         max_body_bytes=4096, max_events_per_batch=5)  # fmt: skip
    key = {"X-API-Key": SECRET}
    with _client(s) as c:
        assert c.post("/v1/events", json={"events": [event(i) for i in range(5)]}, headers=key).status_code == 202
        r = c.post("/v1/events", json={"events": [event(i) for i in range(6)]}, headers=key)
        assert r.status_code == 413 and "exceeds the maximum of 5" in r.json()["detail"]
        big = b'{"user_id": "' + b"u" * 5000 + b'"}'
        declared = c.post("/v1/recommendations", content=big, headers={"Content-Type": "application/json"})
        assert declared.status_code == 413
        # Strings are bounded too: an over-long id is a 422 naming the field, not a stored 10 kB key.
        long_id = c.post("/v1/recommendations", json={"user_id": "u" * 129})
        assert long_id.status_code == 422 and "user_id" in long_id.text


@pytest.mark.integration
def test_chunked_body_over_the_limit_is_refused(tmp_path, redis_url: str, redis_prefix: str) -> None:
    s = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, api_keys=[SECRET],
                         max_body_bytes=4096)  # fmt: skip
    big = b'{"events": [' + b",".join(b'{"event_id": "%d"}' % i for i in range(400)) + b"]}"
    chunks = (big[i : i + 512] for i in range(0, len(big), 512))  # no Content-Length: counted while read
    with _client(s) as c:
        r = c.post("/v1/events", content=chunks, headers={"X-API-Key": SECRET, "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text  # refused, never parsed or stored


@pytest.mark.integration
def test_chunked_body_over_the_limit_is_413(tmp_path, redis_url: str, redis_prefix: str) -> None:
    s = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, api_keys=[SECRET],
                         max_body_bytes=4096)  # fmt: skip
    big = b'{"events": [' + b",".join(b'{"event_id": "%d"}' % i for i in range(400)) + b"]}"
    chunks = (big[i : i + 512] for i in range(0, len(big), 512))
    with _client(s) as c:
        r = c.post("/v1/events", content=chunks, headers={"X-API-Key": SECRET, "Content-Type": "application/json"})
    assert r.status_code == 413 and "exceeds 4096 bytes" in r.json()["detail"]


# --------------------------------------------------------------------------- CORS


@pytest.mark.integration
def test_cors_closed_by_default_and_allow_list_only_when_configured(
    tmp_path, redis_url: str, redis_prefix: str, client: TestClient
) -> None:
    evil = "https://evil.example"
    pre = {"Origin": evil, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    preflight = client.options("/v1/events", headers=pre)
    simple = client.post("/v1/recommendations", json={"user_id": "u"}, headers={"Origin": evil})
    assert simple.status_code == 200
    for r in (preflight, simple):
        assert not {h.lower() for h in r.headers} & {"access-control-allow-origin", "access-control-allow-credentials"}
    s = serving_settings(tmp_path / "cors", redis_url=redis_url, redis_prefix=redis_prefix,
                         cors_origins=["https://shop.example"])  # fmt: skip
    with _client(s) as c:
        good = c.options("/v1/events", headers={**pre, "Origin": "https://shop.example"})
        assert good.headers.get("access-control-allow-origin") == "https://shop.example"
        other = c.options("/v1/events", headers=pre)
        assert "access-control-allow-origin" not in {h.lower() for h in other.headers}
        # The fast path's answers too (it sits inside CORS): a browser on the shop reads its recommendations.
        served = c.post("/v1/recommendations", json={"user_id": "u"}, headers={"Origin": "https://shop.example"})
        assert served.headers.get("access-control-allow-origin") == "https://shop.example"


# --------------------------------------------------------------------------- no unpickling


def _py_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts)


FORBIDDEN_CALLS = {
    "pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "dill.load", "dill.loads",
    "joblib.load", "marshal.loads", "shelve.open", "yaml.unsafe_load", "mlflow.pytorch.load_model",
    "mlflow.pyfunc.load_model", "mlflow.sklearn.load_model", "pd.read_pickle", "pandas.read_pickle",
}  # fmt: skip


def test_weights_are_only_loaded_with_weights_only_and_nothing_is_unpickled() -> None:
    problems: list[str] = []
    files = _py_files("reco", "serving", "dags")
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            kwargs = {k.arg: k.value for k in node.keywords}
            if name.endswith("torch.load") or (name == "load" and "weights_only" in kwargs):
                wo = kwargs.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}: {name} without weights_only=True")
            elif name in FORBIDDEN_CALLS:
                problems.append(f"{where}: {name} unpickles")
            elif name in {"np.load", "numpy.load"}:
                ap = kwargs.get("allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    problems.append(f"{where}: np.load with allow_pickle")
            elif name == "yaml.load":
                loader = ast.unparse(kwargs["Loader"]) if "Loader" in kwargs else ""
                if "Safe" not in loader:
                    problems.append(f"{where}: yaml.load without a safe loader")
    assert problems == []


MARKER: list[Path] = []


def _payload_ran(path: str) -> None:
    Path(path).write_text("pwned")


class _Payload:
    """Unpickling this calls `_payload_ran` (what a malicious weights file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_payload_ran, (self.marker,))


def _evil_blob(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"item_emb.weight": torch.zeros(2, 2), "extra": _Payload(marker)}, buf)
    return buf.getvalue()


def test_a_pickle_bearing_weights_file_is_refused_and_never_runs(tmp_path) -> None:
    from reco.artifacts.bundle import BundleError, ModelBundle
    from reco.online.model import state_from_bytes
    from serving.models import with_weights

    marker = tmp_path / "ran"
    blob = _evil_blob(marker)
    # Control: the payload is real (a plain unpickle runs it).
    torch.load(io.BytesIO(blob), weights_only=False)  # the test's own payload: proves the threat is real
    assert marker.read_text() == "pwned"
    marker.unlink()

    bundle_dir = tmp_path / "bundle"
    tiny_bundle().save(bundle_dir)
    (bundle_dir / "weights.pt").write_bytes(blob)
    with pytest.raises(BundleError, match=r"weights\.pt"):
        ModelBundle.load(bundle_dir)
    with pytest.raises(pickle.UnpicklingError):
        with_weights(tiny_bundle(), blob)  # an online snapshot read from Redis
    with pytest.raises(pickle.UnpicklingError):
        state_from_bytes(blob)  # the learner resuming from Redis
    assert not marker.exists()


# --------------------------------------------------------------------------- loopback-only local stack


def test_embedded_services_bind_to_loopback(tmp_path) -> None:
    from reco.devstack.local_stack import LOOPBACK, AirflowHome, api_service, mlflow_service
    from serving.settings import Settings

    assert LOOPBACK == "127.0.0.1" and Settings().host == "127.0.0.1"

    def host_of(argv: tuple[str, ...]) -> str:
        return argv[argv.index("--host") + 1]

    assert host_of(mlflow_service(tmp_path, 5999).argv) == "127.0.0.1"
    assert host_of(api_service(8999, {}).argv) == "127.0.0.1"
    airflow = AirflowHome(tmp_path / "airflow", ROOT / "dags", api_port=8998)
    assert airflow.env()["AIRFLOW__API__HOST"] == "127.0.0.1"
    api_server = next(s for s in airflow.services() if s.name == "airflow-api-server")
    assert host_of(api_server.argv) == "127.0.0.1"
    for s in airflow.services():  # no component is told to listen on every interface
        assert "0.0.0.0" not in s.argv and "::" not in s.argv
    # The test fixture's MLflow server too: it is started from the same `mlflow_service` (checked above).
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert "stack.start(mlflow_service(home, port))" in conftest


@pytest.mark.integration
def test_embedded_redis_binds_to_loopback(tmp_path) -> None:
    import redis

    from reco.state.embedded_redis import start_embedded

    server = start_embedded(tmp_path)
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert server.url.startswith("redis://127.0.0.1:")
        client.close()
    finally:
        server.stop()


def test_airflow_admin_password_is_generated_private_and_stable(tmp_path) -> None:
    from reco.devstack.local_stack import AirflowHome

    a = AirflowHome(tmp_path / "a", ROOT / "dags")
    b = AirflowHome(tmp_path / "b", ROOT / "dags")
    pa, pb = a.admin_password(), b.admin_password()
    assert pa == a.admin_password()  # stable for one home (the UI login keeps working)
    assert pa != pb and len(pa) >= 16 and pa not in {"admin", "airflow", "password"}
    assert stat.S_IMODE(a.passwords_file.stat().st_mode) == 0o600
    env = a.env()
    assert env["AIRFLOW__CORE__FERNET_KEY"] and env["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] != b.env()["AIRFLOW__API_AUTH__JWT_SECRET"]

"""docker-compose.yml parses as a Compose file (Debian's docker-compose 1.29 `config`, no engine needed)
and every long-running service has a healthcheck and waits for what it needs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ONE_SHOT = {"airflow-init"}


@pytest.fixture(scope="module")
def compose() -> dict:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose (Debian package docker-compose) is required: `make tools` installs it"
    out = subprocess.run(
        [exe, "--env-file", ".env.example", "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_stack_has_every_part(compose):
    expected = {
        "postgres", "redis", "mlflow", "airflow-init", "airflow-apiserver", "airflow-scheduler",
        "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "api", "learner",
    }  # fmt: skip
    assert expected <= set(compose["services"])


def test_long_running_services_have_healthchecks(compose):
    missing = [n for n, s in compose["services"].items() if n not in ONE_SHOT and "healthcheck" not in s]
    assert missing == []


def test_dependencies_wait_for_health(compose):
    services = compose["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            want = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond["condition"] == want, (name, dep)
    assert services["airflow-worker"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_no_secret_committed():
    assert not (ROOT / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text()
    env_example = (ROOT / ".env.example").read_text()
    assert "change-me" in env_example  # placeholders only

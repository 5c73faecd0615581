"""docker-compose.yml parses as a Compose file (Debian's docker-compose 1.29 `config`, no engine needed) and
has the shape docs/operations.md promises: healthchecks with tools each image has, dependencies that wait
for health, one host port for the API (the proxy; `--scale api=N` works), non-root images with pinned
bases, volumes created by the images. `make compose-test` boots it for real (deploy/compose_test.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ONE_SHOT = {"airflow-init", "bootstrap"}
#: Healthcheck programs each image carries (Debian's python3 / bash in every image built here).
IMAGE_TOOLS = {"python", "pg_isready", "redis-cli", "bash", "airflow", "celery", "reco"}


def _target(spec: str | dict) -> str:
    """Container side of a port / volume (compose 1.29 prints file format 2.4's short syntax)."""
    if isinstance(spec, dict):
        return str(spec["target"])
    parts = spec.split(":")
    return parts[-1].split("/")[0] if "/tcp" in spec or "/udp" in spec else parts[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose (Debian package docker-compose) is required: `make tools` installs it"
    out = subprocess.run(
        [exe, "--env-file", ".env.example", "-f", "docker-compose.yml", "--profile", "observability", "config"],
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
        "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "api", "learner", "sink", "bootstrap",
        "proxy", "prometheus", "grafana",
    }  # fmt: skip
    assert expected <= set(compose["services"])
    assert compose["services"]["grafana"]["profiles"] == ["observability"]  # its image needs a registry


def test_long_running_services_have_healthchecks_with_tools_their_image_has(compose):
    for name, svc in compose["services"].items():
        if name in ONE_SHOT or name == "grafana":
            continue
        test = svc["healthcheck"]["test"]
        program = test[1] if test[0] == "CMD" else test[1].split()[0]
        assert program in IMAGE_TOOLS, (name, test)
        assert "curl" not in " ".join(test), name  # none of the images carries curl


def test_dependencies_wait_for_health(compose):
    services = compose["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            want = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond["condition"] == want, (name, dep)
    assert services["airflow-worker"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert services["learner"]["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"


def test_api_scales_behind_the_proxy(compose):
    services = compose["services"]
    assert "ports" not in services["api"]  # `--scale api=N` would collide on a fixed host port
    assert [_target(p) for p in services["proxy"]["ports"]] == ["8000"]
    conf = (ROOT / "deploy" / "proxy" / "nginx.conf").read_text()
    assert "resolver 127.0.0.11" in conf and "http://api:8000" in conf  # re-resolves every replica


def test_same_reco_variables_as_the_production_profile(compose):
    """docs/operations.md's variable table is the contract shared with `reco up --profile production`."""
    table = (ROOT / "docs" / "operations.md").read_text()
    env = compose["services"]["api"]["environment"]
    for name in env:
        if name.startswith("RECO_"):
            assert f"`{name}`" in table, name


def test_images_are_multi_stage_non_root_with_pinned_bases():
    dockerfiles = [ROOT / "Dockerfile", ROOT / "mlflow" / "Dockerfile", *ROOT.glob("deploy/*/Dockerfile")]
    assert len(dockerfiles) == 6
    for path in dockerfiles:
        text = path.read_text()
        base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
        assert base, path
        assert "@sha256:" in base.group(1) or re.search(r":[\w.-]*\d{4,}", base.group(1)), (path, base.group(1))
        assert re.search(r"^USER (?!root)\w", text, re.M), path
    for path in (ROOT / "Dockerfile", ROOT / "mlflow" / "Dockerfile"):
        assert len(re.findall(r"^FROM ", path.read_text(), re.M)) >= 2, path  # build stages + runtime


def test_volumes_are_created_in_the_image_owned_by_their_writer(compose):
    mounts = {
        "mlflow": ("/mlflow/artifacts", ROOT / "mlflow" / "Dockerfile", "chown -R mlflow:mlflow /mlflow"),
        "api": ("/var/lib/reco", ROOT / "Dockerfile", "chown reco:reco /var/lib/reco"),
        "redis": ("/data", ROOT / "deploy" / "redis" / "Dockerfile", "chown redis:redis /data"),
        "postgres": ("/var/lib/postgresql/data", ROOT / "deploy" / "postgres" / "Dockerfile",
                     "chown -R postgres:postgres /var/lib/postgresql"),
    }  # fmt: skip
    for service, (target, dockerfile, chown) in mounts.items():
        targets = [_target(v) for v in compose["services"][service]["volumes"]]
        assert target in targets, (service, targets)
        assert chown in dockerfile.read_text(), service


def test_dockerignore_keeps_the_context_small():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("**") if "**" in ignore else 0] == "**" or "**" in ignore
    assert "!.venv/" not in ignore and "!.reco/" not in ignore


def test_no_secret_committed():
    assert not (ROOT / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text()
    env_example = (ROOT / ".env.example").read_text()
    assert "change-me" in env_example  # placeholders only

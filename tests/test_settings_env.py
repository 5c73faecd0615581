"""Settings a person can type: list settings take `a,b,c` or JSON, a bad value is one line naming the
variable (exit status 2, no traceback), and .env.example loads as it is."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reco.settings import RecoSettings, SettingsInvalid
from serving.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("raw", "keys"),
    [("k1,k2", ["k1", "k2"]), (" k1 , k2 ,", ["k1", "k2"]), ('["k1", "k,2"]', ["k1", "k,2"]), ("", [])],
)
def test_list_settings_accept_commas_and_json(monkeypatch, raw, keys) -> None:
    monkeypatch.setenv("RECO_API_KEYS", raw)
    monkeypatch.setenv("RECO_CORS_ORIGINS", "https://a.example,https://b.example")
    s = Settings(_env_file=None)
    assert [k.get_secret_value() for k in s.api_keys] == keys
    assert s.cors_origins == ["https://a.example", "https://b.example"]


def test_bad_value_is_one_line_naming_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("RECO_API_KEYS", '["unterminated')
    with pytest.raises(SettingsInvalid) as err:
        Settings(_env_file=None)
    msg = str(err.value)
    assert "\n" not in msg and "RECO_API_KEYS" in msg and "a,b,c" in msg
    assert "unterminated" not in msg  # a key is a secret: never echoed
    monkeypatch.delenv("RECO_API_KEYS")
    monkeypatch.setenv("RECO_PORT", "eighty")
    with pytest.raises(SettingsInvalid, match=r"RECO_PORT='eighty': .*integer") as err:
        Settings(_env_file=None)
    assert "\n" not in str(err.value)


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "RECO_HOME": str(tmp_path), "RECO_API_KEYS": "[oops"}
    out = subprocess.run(
        [sys.executable, "-c", "from reco.cli import main; main()", "serve"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid setting RECO_API_KEYS"), out.stderr
    assert "Traceback" not in out.stderr


def test_env_example_loads_as_it_is(tmp_path, monkeypatch) -> None:
    for name in ("RECO_API_KEYS", "RECO_CORS_ORIGINS", "RECO_HOME", "RECO_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    s = Settings()  # reads ./.env, as `reco serve` does
    assert [k.get_secret_value() for k in s.api_keys] == ["change-me-too"]
    assert isinstance(RecoSettings(), RecoSettings)

"""The HTML report in a real browser: Debian's headless Chromium renders a seeded simulated experiment's
report, the page logs nothing to the console, the DOM shows the verdict, and the screenshot is kept as a
test artifact (its path is printed; `RECO_TEST_ARTIFACTS=DIR` keeps it there instead of pytest's tmp).

Console messages reach Chromium's log (`--enable-logging=stderr`) as `INFO:CONSOLE` lines whatever their
level; the report has no script at all, so any such line is a failure. A positive control (a page that
logs an error) proves the scan would see one. `make tools` installs `chromium`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import pytest

from reco.experiments.report import ReportConfig, build_report, render_html
from reco.experiments.simulate import SimConfig, simulate_events

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]  # fmt: skip
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)\]")


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is missing: run `make tools` (apt-get install chromium)")
    return exe


def _run(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [_chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()]
    # generous timeout: two cores shared with the rest of the suite
    return subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE.search(line)]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    t = simulate_events(SimConfig(users=4000, sessions=30000, days=21, pre_days=14, purchase_rate=0.1,
                                  ctr={"control": 0.10, "treatment": 0.115}, seed=1))  # fmt: skip
    rep = build_report(t, ReportConfig(control="control", experiment="ranker-v2", start=date(2026, 1, 1)))
    out = tmp_path_factory.mktemp("report") / "report.html"
    out.write_text(render_html(rep))
    return out


def test_console_scan_sees_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><p>x</p><script>console.error("marker"); undefinedCall();</script>')
    out = _run(bad, tmp_path / "profile", "--dump-dom")
    lines = _console(out.stderr)
    assert any("marker" in line for line in lines) and any("undefinedCall" in line for line in lines)


def test_report_renders_without_console_errors_and_shows_the_verdict(page: Path, tmp_path: Path) -> None:
    dom = _run(page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console(dom.stderr) == []
    verdict = re.search(r'id="verdict-action">([^<]+)<', dom.stdout)
    assert verdict and verdict.group(1).strip() == "ship treatment"
    assert "<title>ranker-v2 · A/B report</title>" in dom.stdout
    artifacts = Path(os.environ.get("RECO_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "ab-report.png"
    out = _run(page, tmp_path / "profile-shot", "--window-size=1320,3000", f"--screenshot={shot}")
    assert out.returncode == 0 and _console(out.stderr) == [], out.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    print(f"screenshot: {shot}")

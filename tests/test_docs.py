"""The README's configuration table lists every setting of the API (which includes the shared ones)."""

from pathlib import Path

from serving.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme():
    missing = [f"RECO_{name.upper()}" for name in Settings.model_fields if f"`RECO_{name.upper()}`" not in README]
    assert missing == []


def test_readme_opens_with_the_two_commands():
    first_screen = "\n".join(README.splitlines()[:8])
    assert "make demo" in first_screen and "make test" in first_screen

"""`reco bootstrap` on a registry that has a champion trains nothing and only points the missing arm aliases
at it (the compose service may run again; an arm added to the config later starts from the champion).
The training path runs in `make compose-test` (MovieLens-100k, one epoch)."""

from __future__ import annotations

import uuid

import pytest

from reco.artifacts import registry
from reco.offline.bootstrap import bootstrap
from tests.test_registry import lineage, tiny_bundle

pytestmark = pytest.mark.integration


def test_bootstrap_with_a_champion_fills_in_missing_aliases_only(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    client = registry.client_for(uri)
    name = f"rk-{uuid.uuid4().hex[:8]}"
    run_id = client.create_run(registry.ensure_experiment(client, "reco-test")).info.run_id
    v1 = str(registry.log_bundle(client, name, tiny_bundle(0), lineage("b1"), run_id=run_id).version)
    registry.promote(client, name, registry.CHAMPION, v1, who="t", reason="first")
    registry.promote(client, name, "arm-control", v1, who="t", reason="first")

    result = bootstrap(uri, name, tmp_path / "no-movielens-needed", ["arm-control", "arm-treatment"])
    assert (result.version, result.trained, result.moved) == (v1, False, ["arm-treatment"])
    assert str(registry.alias_version(client, name, "arm-treatment").version) == v1
    again = bootstrap(uri, name, tmp_path / "no-movielens-needed", ["arm-control", "arm-treatment"])
    assert (again.trained, again.moved) == (False, [])
    assert registry.alias_history(client, name, "arm-treatment")[-1]["who"] == "reco bootstrap"

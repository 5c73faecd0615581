"""Experiment assignment: deterministic, salted per experiment, shares honoured, config validated."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reco.experiments.assignment import (
    DEFAULT_CONFIG,
    ConfigError,
    ExperimentConfig,
    assign,
    bucket,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[1]


def _two_experiments(salt_a: str = "salt-a") -> ExperimentConfig:
    def arm(name: str, traffic: float) -> dict:
        return {"name": name, "traffic": traffic, "alias": f"arm-{name}"}

    return parse_config(
        {
            "version": 3,
            "experiments": [
                {"name": "a", "salt": salt_a, "arms": [arm("control", 0.5), arm("treatment", 0.5)]},
                {"name": "b", "salt": "salt-b", "arms": [arm("control", 0.2), arm("x", 0.3), arm("y", 0.5)]},
            ],
        }
    )


def test_repo_file_equals_built_in_default() -> None:
    assert yaml.safe_load((REPO / "experiments.yaml").read_text()) == DEFAULT_CONFIG
    cfg = load_config(REPO / "experiments.yaml")
    assert cfg == load_config(None)
    exp = cfg.experiment("ranker-v2")
    assert [(a.name, a.traffic, a.alias) for a in exp.arms] == [
        ("control", 0.5, "arm-control"),
        ("treatment", 0.5, "arm-treatment"),
    ]
    assert exp.control == "control" and cfg.aliases["treatment"] == "arm-treatment"


def test_assignment_is_deterministic() -> None:
    exp = _two_experiments().experiment("b")
    first = [assign(exp, f"user-{i}") for i in range(500)]
    assert first == [assign(exp, f"user-{i}") for i in range(500)]
    assert assign(exp, "user-1").alias == f"arm-{assign(exp, 'user-1').arm}"


def test_shares_over_100k_users_within_one_percent() -> None:
    exp = _two_experiments().experiment("b")
    n = 100_000
    counts = Counter(assign(exp, f"synthetic-{i}").arm for i in range(n))
    for arm in exp.arms:
        assert abs(counts[arm.name] / n - arm.traffic) < 0.01, (arm.name, counts[arm.name] / n)


def test_changing_one_salt_does_not_reshuffle_another_experiment() -> None:
    before, after = _two_experiments("salt-a"), _two_experiments("salt-a-v2")
    users = [f"u{i}" for i in range(5000)]
    assert [assign(before.experiment("b"), u) for u in users] == [assign(after.experiment("b"), u) for u in users]
    moved = sum(assign(before.experiment("a"), u).arm != assign(after.experiment("a"), u).arm for u in users)
    assert 0.4 < moved / len(users) < 0.6  # experiment a itself is reshuffled (about half move)


def test_bucket_uses_52_bits() -> None:
    values = {bucket("s", f"u{i}") for i in range(2000)}
    assert len(values) == 2000
    assert all(v * 2**52 == int(v * 2**52) for v in values)  # exact multiples of 2^-52


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["experiments"][0]["arms"][0].update(traffic=0.6), "sums to"),
        (lambda c: c["experiments"][0]["arms"][0].update(traffic=-0.5), "greater than or equal to 0"),
        (lambda c: c["experiments"][0]["arms"][1].update(name="control"), "duplicate arm names"),
        (lambda c: c["experiments"][0].update(arms=[]), "at least 1 item"),
        (lambda c: c["experiments"][0].update(control="baseline"), "control arm 'baseline'"),
        (lambda c: c["experiments"].append(copy.deepcopy(c["experiments"][0])), "duplicate experiment names"),
        (lambda c: c["experiments"][0]["arms"][0]["exploration"].update(strategy="ucb"), "epsilon_greedy"),
        (lambda c: c["experiments"][0]["arms"][0]["exploration"].update(rate=2), "less than or equal to 1"),
        (lambda c: c.pop("version"), "version"),
        (lambda c: c["experiments"][0].update(sault="x"), "sault"),
    ],
)
def test_invalid_configs_give_clear_errors(mutate, message: str) -> None:
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    mutate(cfg)
    with pytest.raises(ConfigError, match="invalid experiment config") as err:
        parse_config(cfg)
    assert message in str(err.value)


def test_shares_may_round_within_tolerance_and_zero_share_arms_get_nobody() -> None:
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    arms = cfg["experiments"][0]["arms"]
    arms[0]["traffic"], arms[1]["traffic"] = 0.1 + 0.2, 0.7  # 1.0000000000000002
    arms.append({"name": "off", "traffic": 0.0, "alias": "arm-off"})
    exp = parse_config(cfg).experiment()
    assert "off" not in {assign(exp, f"u{i}").arm for i in range(3000)}


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@settings(max_examples=200, deadline=None)
@given(
    salt=st.text(min_size=1, max_size=40),
    user=st.text(max_size=60),
    weights=st.lists(st.integers(0, 1000), min_size=1, max_size=6).filter(lambda w: sum(w) > 0),
)
def test_assignment_properties(salt: str, user: str, weights: list[int]) -> None:
    total = sum(weights)
    arms = [{"name": f"arm{i}", "traffic": w / total, "alias": f"a{i}"} for i, w in enumerate(weights)]
    arms[0]["name"] = "control"
    # shares that sum to 1 up to float rounding are accepted
    if abs(sum(a["traffic"] for a in arms) - 1) > 1e-9:
        return
    exp = parse_config({"version": 1, "experiments": [{"name": "e", "salt": salt, "arms": arms}]}).experiment()
    a = assign(exp, user)
    assert a == assign(exp, user)
    assert 0.0 <= a.bucket < 1.0
    chosen = exp.arm(a.arm)
    assert chosen.traffic > 0
    lo = sum(x.traffic for x in exp.arms[: exp.arms.index(chosen)])
    assert lo - 1e-9 <= a.bucket < lo + chosen.traffic + 1e-9

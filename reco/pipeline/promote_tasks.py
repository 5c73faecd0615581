"""Task function of the `reco_promote` DAG: move or roll back a registry alias."""

from __future__ import annotations

import re
from typing import Any

_ALIAS = re.compile(r"^(champion|arm-[a-z0-9_-]{1,40})$")


def check_alias(alias: str) -> str:
    """Only `champion` and `arm-<name>` may be moved.

    >>> check_alias("arm-treatment")
    'arm-treatment'
    """
    if not _ALIAS.match(alias):
        raise ValueError(f"alias {alias!r} is not 'champion' or 'arm-<name>'")
    return alias


def move_alias(
    tracking_uri: str,
    model_name: str,
    action: str,
    target_alias: str,
    source: str | None = None,
    reason: str = "",
    who: str = "unknown",
    experiments_path: str | None = None,
) -> dict[str, Any]:
    """`action="promote"`: point `target_alias` at `source` (a version number or another alias);
    `action="rollback"`: point it back at its previous version. Returns the recorded move, with the
    experiment phases it started (`reco.experiments.phases`: a promotion records them before the move, a
    rollback, whose target the registry resolves, right after it)."""
    from reco.artifacts import registry
    from reco.experiments.phases import promote_in_experiment

    check_alias(target_alias)
    if not reason.strip():
        raise ValueError("a reason is required")
    client = registry.client_for(tracking_uri)
    if action == "promote":
        if not source:
            raise ValueError("promote needs a source version or alias")
        mv = registry.get_version(client, model_name, source)
        if mv.tags.get("rejected"):  # refused before any phase is recorded for it
            raise registry.RegistryError(f"version {mv.version} of {model_name!r} was rejected ({mv.tags['rejected']})")
        version = str(mv.version)
        moves = []
        phases = promote_in_experiment(
            client, model_name, target_alias, version, who=who, why=reason, experiments_path=experiments_path,
            move=lambda: moves.append(registry.promote(client, model_name, target_alias, version, who=who,
                                                       reason=reason)),
        )  # fmt: skip
        move = moves[0]
    elif action == "rollback":
        move = registry.rollback(client, model_name, target_alias, who=who, reason=reason)
        phases = promote_in_experiment(client, model_name, target_alias, move.version, who=who, why=reason,
                                       move=lambda: None, experiments_path=experiments_path)  # fmt: skip
    else:
        raise ValueError(f"unknown action {action!r}: use 'promote' or 'rollback'")
    return {**move.to_dict(), "phases": [p.to_dict() for p in phases]}

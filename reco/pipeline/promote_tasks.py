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
) -> dict[str, Any]:
    """`action="promote"`: point `target_alias` at `source` (a version number or another alias);
    `action="rollback"`: point it back at its previous version. Returns the recorded move."""
    from reco.artifacts import registry

    check_alias(target_alias)
    if not reason.strip():
        raise ValueError("a reason is required")
    client = registry.client_for(tracking_uri)
    if action == "promote":
        if not source:
            raise ValueError("promote needs a source version or alias")
        move = registry.promote(client, model_name, target_alias, source, who=who, reason=reason)
    elif action == "rollback":
        move = registry.rollback(client, model_name, target_alias, who=who, reason=reason)
    else:
        raise ValueError(f"unknown action {action!r}: use 'promote' or 'rollback'")
    return move.to_dict()

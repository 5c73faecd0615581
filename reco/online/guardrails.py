"""Guardrails of online updates: a rolling holdout and the revert-to-base rule.

The holdout holds the most recent labelled examples that are *not* trained on (a seeded fraction of the
stream). When an example enters it, the frozen base model's logit is computed once and kept, so the
base log-loss on the current holdout costs no forward pass at check time. At each check the online
model is scored on the same rows; `RevertRule` says when the online model has been worse than the base
by more than `margin` (absolute log-loss) for `patience` consecutive checks.
"""

from __future__ import annotations

import math

import numpy as np

from reco.online.examples import Examples, ReplayBuffer


def log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy from logits, numerically stable.

    >>> round(log_loss(np.array([0.0, 0.0]), np.array([1.0, 0.0])), 4)
    0.6931
    """
    if len(labels) == 0:
        return float("nan")
    z = logits.astype(np.float64)
    return float(np.mean(np.maximum(z, 0) - z * labels + np.log1p(np.exp(-np.abs(z)))))


class RevertRule:
    """Counts consecutive checks where online log-loss > base log-loss + margin.

    >>> rule = RevertRule(margin=0.01, patience=2)
    >>> rule.check(0.50, 0.45), rule.check(0.40, 0.45), rule.check(0.5, 0.45), rule.check(0.5, 0.45)
    (False, False, False, True)
    """

    def __init__(self, margin: float = 0.01, patience: int = 3):
        self.margin = margin
        self.patience = patience
        self._strikes = 0

    @property
    def strikes(self) -> int:
        return self._strikes

    def check(self, online_loss: float, base_loss: float) -> bool:
        """Record one check; True when the arm must revert (the counter then starts over)."""
        worse = not math.isfinite(online_loss) or online_loss > base_loss + self.margin
        self._strikes = self._strikes + 1 if worse else 0
        if self._strikes >= self.patience:
            self._strikes = 0
            return True
        return False

    def reset(self) -> None:
        self._strikes = 0


class Holdout:
    """The rolling holdout: a bounded ring of recent examples carrying the base model's logit."""

    def __init__(self, capacity: int = 2048, max_session: int = 20):
        self.capacity = capacity
        self.max_session = max_session
        self._ring = ReplayBuffer(capacity, max_session, seed=0)

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, ex: Examples) -> None:
        self._ring.add(ex)

    def rows(self) -> Examples:
        return self._ring.all()

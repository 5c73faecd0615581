"""The session-aware ranker and its bundle (model + vocabulary + catalog). Importing this package
does not import torch: `reco.models.ranker` does."""

from reco.models.bundle import PAD, BundleError, ModelBundle, ScoreResult

__all__ = ["PAD", "BundleError", "ModelBundle", "ScoreResult"]

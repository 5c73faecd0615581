"""The quality figures reproduce: the same seed gives the same metrics (benchmarks/quality_ml100k.py and its
NARM baseline, on a slice of MovieLens-100k with one epoch)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

TIMINGS = {"epoch_cpu_s", "train_s", "total_s"}


def _figures(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in TIMINGS} for line in lines]


@pytest.mark.parametrize("script", ["quality_ml100k", "narm_ml100k"])
def test_the_same_seed_gives_the_same_figures(script, movielens_dir):
    main = __import__(script).main
    threads = torch.get_num_threads()
    argv = ["--data", str(movielens_dir), "--users", "30", "--epochs", "1", "--seeds", "4"]
    first, again = main(argv), main(argv)
    assert _figures(first) == _figures(again)
    assert first[0]["users"] == 30 and 0.0 <= first[0]["test_excl_ndcg@10"] <= 1.0
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()  # restored

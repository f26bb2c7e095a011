"""The search benchmark's cost model for random search, checked against brute force."""
from __future__ import annotations

import importlib.util
import itertools
import math
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("search_efficiency", ROOT / "benchmarks/search_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["search_efficiency"] = module
    spec.loader.exec_module(module)
    return module


# Five grid points: one failed after 2 epochs (NaN), the others complete 4-epoch curves.
CURVES = [[0.1, 0.2, 0.3, 0.35], [0.2, math.nan], [0.3, 0.4, 0.5, 0.55], [0.1, 0.1, 0.2, 0.2], [0.4, 0.5, 0.6, 0.6]]


def _cost(order: tuple[int, ...], target: float, bench) -> int:
    spent = 0
    for index in order:
        spent += len(CURVES[index])
        if bench.finite_max(CURVES[index]) >= target:
            return spent
    raise AssertionError("unreachable target")


@pytest.mark.parametrize("target", [0.2, 0.35, 0.55, 0.6])
def test_expected_random_epochs_is_the_mean_over_all_draw_orders(bench, target):
    brute = statistics.mean(_cost(order, target, bench) for order in itertools.permutations(range(len(CURVES))))
    assert bench.expected_random_epochs(CURVES, target) == pytest.approx(brute)


def test_expected_random_epochs_none_when_nothing_reaches(bench):
    assert bench.expected_random_epochs(CURVES, 0.61) is None


def test_fresh_random_epochs_follows_one_seeded_order(bench):
    spent = bench.fresh_random_epochs(CURVES, 0.55, seed=3)
    assert spent == bench.fresh_random_epochs(CURVES, 0.55, seed=3)
    assert spent in {_cost(order, 0.55, bench) for order in itertools.permutations(range(len(CURVES)))}
    assert bench.fresh_random_epochs(CURVES, 0.61, seed=3) is None

"""The search benchmark: its cost model for random search, checked against brute force, and its seed-noise report."""
from __future__ import annotations

import importlib.util
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from search.space import load_space

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


def test_seed_noise_report_reads_each_training_seed_from_its_own_cache(bench, tmp_path):
    """Curves already stored for every training seed are read, not retrained; the pooled standard
    deviation is over seeds within each configuration, the spread between configurations within one seed."""
    space = load_space("sac-config3")
    tree = {"train": {"seed": 0}}
    configs = [{"loss.lambda": 0.5, "train.batch_size": 2, "train.lr": 0.0013},
               {"loss.lambda": 0.9, "train.batch_size": 2, "train.lr": 0.0013}]
    finals = {0: [0.40, 0.42], 1: [0.44, 0.43], 2: [0.36, 0.41]}  # per seed, per configuration

    def store(seed: int) -> Path:
        seeded = {"train": {"seed": seed}}
        path = tmp_path / f"curves-{bench.params_digest(seeded, space)}.json"
        curves = {bench.config_key(chosen): {"epochs": [{"val_f1": value / 2}, {"val_f1": value}, {"val_f1": value},
                                                        {"val_f1": value - 0.01}], "done": True}
                  for chosen, value in zip(configs, finals[seed])}
        path.write_text(json.dumps({"space": space.name, "curves": curves}))
        return path

    table = bench.CurveTable(space, tree, store(0))
    store(1), store(2)
    text = bench.seed_noise_report(space, tree, table, configs, 2, tmp_path)

    per_config = [[finals[seed][index] for seed in (0, 1, 2)] for index in range(2)]
    pooled = math.sqrt(statistics.mean(statistics.variance(values) for values in per_config))
    assert f"Pooled standard deviation over training seeds: {pooled:.4f}." in text
    assert "under one training seed: 0.0500." in text  # seed 2: 0.41 - 0.36
    assert "| 0.4000 | 0.4400 | 0.3600 | 0.0800 |" in text
    assert table.epochs_trained == 0

"""`dvc.yaml` lists exactly the params.yaml keys each stage reads, so `dvc exp run -S key=value`
reruns the stages that read `key`, and only those.

The keys a stage reads are recorded while it runs: every stage command runs in-process on tiny
data (as `dvc repro` would run it), with attribute reads on the loaded params recorded by dotted
key. Two runs cover the family-specific code: the default SAM family, and `sam_lite`, whose
`embed` and `distill` stages do real work. A key listed for a stage must be read by it in at
least one of the two runs; a key read in either run must be listed (itself or a section above it).
"""
from __future__ import annotations

import shlex
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

import crackops.cli as cli
from pipeline.params import Params, _Section
from test_pipeline import TINY, merge

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Read but deliberately not listed: where a stage writes or records, not what it computes. The
# paths are fixed in dvc.yaml's deps and outs (changing one is a different pipeline, not an
# experiment); the tracking settings choose where the run is logged, not its results.
NOT_PARAMS = {
    "data.prepared_dir", "train.out_dir", "eval.out_dir", "distill.out_dir",
    "mlflow.enabled", "mlflow.tracking_uri", "mlflow.experiment",
}
FAMILIES = {
    "sam": {"train": {"epochs": 1}},
    "sam_lite": {"model": {"family": "sam_lite"}, "distill": {"epochs": 1, "batch_size": 8},
                 "train": {"epochs": 1}},
}


class ParamsReadRecorder:
    """Records ``section.field`` reads on one loaded :class:`Params` (by dotted params.yaml key)."""

    def __init__(self) -> None:
        self.prefixes: dict[int, str] = {}
        self.read: set[str] = set()
        self._keep: list[Params] = []  # keeps ids in `prefixes` from being reused

    def track(self, params: Params) -> Params:
        self._keep.append(params)
        todo = [(params, "")]
        while todo:
            section, prefix = todo.pop()
            self.prefixes[id(section)] = prefix
            for name, field in type(section).model_fields.items():
                value = section.__dict__[name]
                if isinstance(value, _Section):
                    todo.append((value, f"{prefix}{field.alias or name}."))
        return params

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = object.__getattribute__
        prefixes, read = self.prefixes, self.read

        def recording_getattribute(section: _Section, name: str):
            value = original(section, name)
            if not name.startswith("_") and not isinstance(value, _Section):
                prefix = prefixes.get(id(section))
                field = type(section).model_fields.get(name)
                if prefix is not None and field is not None:
                    read.add(prefix + (field.alias or name))
            return value

        monkeypatch.setattr(_Section, "__getattribute__", recording_getattribute)
        loader = cli.load_params
        monkeypatch.setattr(cli, "load_params", lambda *args, **kwargs: self.track(loader(*args, **kwargs)))


def _covered(key: str, listed: list[str]) -> bool:
    return any(key == entry or key.startswith(entry + ".") for entry in listed)


@pytest.fixture(scope="module")
def keys_read(tmp_path_factory) -> dict[str, set[str]]:
    """Stage -> params keys it read, over both families' runs of the whole pipeline."""
    read: dict[str, set[str]] = defaultdict(set)
    for family, extra in FAMILIES.items():
        project = tmp_path_factory.mktemp(family)
        base = yaml.safe_load((ROOT / "params.yaml").read_text())
        own_tracking = {"mlflow": {"tracking_uri": f"sqlite:///{project / 'mlflow.db'}"}}
        params = merge(base, merge(merge(TINY, extra), own_tracking))
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.chdir(project)
            monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
            for stage, spec in STAGES.items():  # dvc.yaml's order is the pipeline's order
                recorder = ParamsReadRecorder()
                with pytest.MonkeyPatch.context() as patch:
                    recorder.install(patch)
                    argv = shlex.split(spec["cmd"])[1:]
                    assert cli.main(argv) == 0, f"{family}: crackops {' '.join(argv)} failed"
                read[stage] |= recorder.read
    return read


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_lists_exactly_the_params_it_reads(keys_read, stage: str) -> None:
    listed = STAGES[stage].get("params", [])
    read = keys_read[stage] - NOT_PARAMS
    missing = sorted(key for key in read if not _covered(key, listed))
    unused = sorted(entry for entry in listed if not any(_covered(key, [entry]) for key in read))
    assert not missing, f"dvc.yaml stage {stage!r} reads params it does not list: {missing}"
    assert not unused, f"dvc.yaml stage {stage!r} lists params it never reads: {unused}"


def test_the_recorder_sees_reads_through_sections() -> None:
    recorder = ParamsReadRecorder()
    with pytest.MonkeyPatch.context() as patch:
        recorder.install(patch)
        params = recorder.track(Params())
        assert params.loss.lambda_ >= 0 and params.train.epochs > 0
        section = params.data.synthetic
        assert section.n_images > 0
    assert recorder.read == {"loss.lambda", "train.epochs", "data.synthetic.n_images"}


def test_every_key_left_out_on_purpose_is_still_read(keys_read) -> None:
    read = set().union(*keys_read.values())
    assert NOT_PARAMS <= read, f"NOT_PARAMS names keys no stage reads: {sorted(NOT_PARAMS - read)}"

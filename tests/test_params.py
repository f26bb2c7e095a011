"""Parameter schema, -S overrides and the CLI's error reporting."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crackops.cli import main
from pipeline.errors import ParamsError
from pipeline.params import Params, apply_overrides, load_params, parse_override

DEFAULTS = str(Path(__file__).with_name("defaults.yaml"))  # an empty params file: the built-in defaults

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_file_is_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    # The file spells out every key, so users see every knob: its flat view equals the schema's.
    from pipeline.params import read_params_file, flatten
    assert set(flatten(read_params_file(REPO / "params.yaml"))) == set(Params().flat())
    assert params.tuning.method == "full" and params.model.variant == "vit_tiny"


def test_override_values_are_yaml_parsed():
    assert parse_override("train.lr=5e-4") == ("train.lr", "5e-4")  # PyYAML keeps this a str; pydantic parses it
    assert parse_override("tuning.lora.targets=[q, v]") == ("tuning.lora.targets", ["q", "v"])
    assert parse_override("model.checkpoint=null") == ("model.checkpoint", None)
    params = load_params("missing.yaml", ["train.lr=5e-4", "train.batch_size=2", "loss.lambda=0.65",
                                          "tuning.lora.targets=[qkv]"])
    assert params.train.lr == pytest.approx(5e-4)
    assert params.train.batch_size == 2
    assert params.loss.lambda_ == 0.65
    assert params.tuning.lora.targets == ["qkv"]
    assert params.flat()["loss.lambda"] == 0.65


def test_overrides_do_not_mutate_input():
    tree = {"train": {"lr": 1.0}}
    assert apply_overrides(tree, ["train.lr=2"])["train"]["lr"] == 2
    assert tree["train"]["lr"] == 1.0


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lrr=1", "train.lrr"),
        ("train.lr=abc", "train.lr"),
        ("tuning.method=ft2", "tuning.method"),
        ("tuning.lora.targets=[q, wq]", "tuning.lora.targets.1"),
        ("data.img_size=250", "data.img_size"),
        ("loss.lambda=-1", "loss.lambda"),
        ("bogus.section=1", "bogus"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ParamsError) as error:
        load_params("missing.yaml", [override])
    assert f"  {key}:" in str(error.value)


def test_override_into_a_value_is_an_error():
    with pytest.raises(ParamsError, match="train.lr is a value"):
        load_params("missing.yaml", ["train.lr.x=1"])


def test_malformed_override_and_yaml_file(tmp_path):
    with pytest.raises(ParamsError, match="key=value"):
        parse_override("train.lr")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match=str(bad)):
        load_params(bad)


def test_cli_reports_bad_key_without_traceback(capsys):
    assert main(["count-params", "--params", DEFAULTS, "-S", "train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "train.lrr: unknown parameter" in err and "Traceback" not in err



def test_a_missing_params_file_is_an_error_but_a_missing_default_means_defaults(tmp_path, monkeypatch, capsys):
    # A mistyped --params once trained silently on the built-in defaults.
    from crackops import cli

    seen = []
    monkeypatch.setitem(cli.COMMANDS, "prepare", lambda params, args: seen.append(params))
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "--params", "parms.yaml"]) == 2
    assert capsys.readouterr().err == "crackops prepare: error: --params parms.yaml: no such file\n"
    assert main(["prepare"]) == 0 and seen == [Params()]  # no params.yaml here: the defaults, as --help says


def test_val_and_test_fractions_must_leave_training_images(capsys):
    assert main(["count-params", "--params", DEFAULTS, "-S", "data.val_fraction=0.4",
                 "-S", "data.test_fraction=0.6"]) == 2
    assert capsys.readouterr().err == (
        f"crackops count-params: error: invalid parameters in {DEFAULTS} with overrides data.val_fraction=0.4 "
        "data.test_fraction=0.6:\n"
        "  data: Value error, data.val_fraction 0.4 + data.test_fraction 0.6 must be below 1, "
        "leaving images to train on\n")


def test_console_script_count_params_json(tmp_path):
    exe = Path(sys.executable).with_name("crackops")
    out = subprocess.run([str(exe), "count-params", "--json", "-S", "tuning.method=decoder"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    counts = json.loads(out)
    assert counts["trainable"] == 4_058_340 and counts["total"] > counts["trainable"]


def test_a_closed_output_pipe_ends_the_command_quietly(tmp_path):
    # `crackops lineage | head`: the reader goes away mid-output; no traceback, exit 141 as SIGPIPE.
    script = ("import sys\nfrom crackops import cli\n"
              "cli.COMMANDS['prepare'] = lambda params, args: [print('x' * 200) for _ in range(100_000)]\n"
              "sys.exit(cli.main(['prepare']))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err.decode()[-2000:]
    assert b"Traceback" not in err and b"BrokenPipeError" not in err

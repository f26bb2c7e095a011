"""The study recipes: each paper's settings load, validate, appear in the README as they are, and
run end to end for one epoch (`--recipe NAME` on tiny random-weight models, sizes overridden)."""
from __future__ import annotations

from pathlib import Path

import pytest

from crackops.cli import main
from pipeline.params import load_params
from pipeline.recipes import RecipeError, load_recipe, recipe_names

DEFAULTS = str(Path(__file__).with_name("defaults.yaml"))  # an empty params file: the built-in defaults

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["cracksam", "deeplabv3", "lightweight_sam", "sac"]
# Shrinks a recipe to tiny random-weight models on tiny data; the rest of the recipe stays.
TINY = ["model.variant=vit_tiny", "model.checkpoint=null", "data.img_size=64", "train.epochs=1",
        "train.batch_size=2", "train.warmup_iters=2", "distill.teacher_variant=vit_tiny",
        "distill.teacher_checkpoint=null", "distill.teacher_img_size=null", "distill.epochs=1",
        "eval.n_thresholds=9", "eval.blur_kernels=[1]", "eval.n_overlays=1", "eval.zero_shot=[]",
        "mlflow.enabled=false"]


def test_every_shipped_recipe_is_tested():
    assert recipe_names() == RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_and_sets_what_it_says(name: str) -> None:
    recipe = load_recipe(name)
    params = load_params("missing.yaml", recipe.overrides())
    flat = params.flat()
    for key, value in recipe.values().items():
        assert flat[key] == value, key
    assert all(setting.params or setting.note for setting in recipe.settings), "a setting with neither values nor a note"


@pytest.mark.parametrize("name", RECIPES)
def test_readme_shows_each_recipe_table_as_it_is(name: str) -> None:
    assert load_recipe(name).table() in (ROOT / "README.md").read_text(), f"README's {name} table is out of date"


def test_recipe_command_prints_dvc_args_that_give_the_same_params(capsys) -> None:
    assert main(["recipe", "deeplabv3", "--params", DEFAULTS, "--dvc-args"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("-S ") for line in lines)
    values = [line[len("-S "):].strip("'") for line in lines]
    assert load_params("missing.yaml", values) == load_params("missing.yaml", load_recipe("deeplabv3").overrides())


def test_unknown_recipe_is_one_clear_line(capsys) -> None:
    assert main(["train", "--params", DEFAULTS, "--recipe", "samed"]) == 2
    assert "no recipe 'samed'; shipped: cracksam, deeplabv3, lightweight_sam, sac" in capsys.readouterr().err
    with pytest.raises(RecipeError, match="no recipe"):
        load_recipe("nope")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recipes")
    args = ["--params", DEFAULTS, *(f"-S{item}" for item in TINY),
            f"-Sdata.prepared_dir={folder / 'prepared'}", "-Sdata.synthetic.n_images=12", "-Sdata.synthetic.size=64"]
    assert main(["prepare", *args]) == 0
    return folder


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_one_epoch_end_to_end(name: str, prepared: Path) -> None:
    out = prepared / name
    args = ["--params", DEFAULTS, "--recipe", name, *(f"-S{item}" for item in TINY),
            f"-Sdata.prepared_dir={prepared / 'prepared'}", f"-Sdistill.out_dir={out / 'distill'}",
            f"-Smodel.student_checkpoint={out / 'distill/student.safetensors'}",
            f"-Strain.out_dir={out / 'train'}", f"-Seval.out_dir={out / 'eval'}"]
    if name == "deeplabv3":
        args.append("-Sdata.augment.crop_size=32")
    for stage in ("embed", "distill", "train", "evaluate"):
        flags = ["--no-progress"]
        assert main([stage, *flags, *args]) == 0, stage
    assert (out / "eval/metrics.json").is_file()
    trained = load_params(out / "train/params.yaml")
    overridden = {arg[len("-S"):].split("=")[0] for arg in args if arg.startswith("-S")}
    kept = {key: value for key, value in load_recipe(name).values().items() if key not in overridden}
    assert kept, "the test overrode every setting of the recipe"
    for key, value in kept.items():
        assert trained.flat()[key] == value, key  # the trained model was made with the recipe's settings

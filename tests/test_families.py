"""The other model families (lightweight SAM, DeepLabV3), limited supervision, and both through `dvc repro`."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from crackops.cli import main
from pipeline.data.limited import groups_from_pattern, select_training_stems
from pipeline.errors import CheckpointError, DatasetError, ParamsError
from pipeline.losses import build_loss
from pipeline.models.deeplab import build_deeplabv3, load_deeplab_checkpoint
from pipeline.models.factory import FAMILIES, model_label
from pipeline.models.sam_lite import CrackHead, MultiScaleConv, SamLiteStudent
from pipeline.params import MODEL_FAMILIES, load_params
from pipeline.training.run import SUBSET_FILE, build_loaders, train_from_params
from pipeline.training.trained import PARAMS_FILE, load_trained_model, save_trained_model
from pipeline.tuning import count_parameters
from pipeline.tuning.build import build_model
from pipeline.tuning.head import apply_head_tuning

DEFAULTS = str(Path(__file__).with_name("defaults.yaml"))  # an empty params file: the built-in defaults

SAM_LITE_TOTAL = 6_167_445  # TinyViT-5M stages 5,071,124 + neck 672,768 + crack head 423,553
SAM_LITE_HEAD = 423_553


def params_for(*overrides: str):
    return load_params("missing.yaml", ["data.img_size=64", "mlflow.enabled=false", *overrides])


# --- lightweight SAM ---------------------------------------------------------------------------


def test_multiscale_conv_splits_channels_with_growing_dilation():
    conv = MultiScaleConv(128, groups=4)
    assert [b.kernel_size for b in conv.branches] == [(1, 1), (3, 3), (3, 3), (3, 3)]
    assert [b.dilation for b in conv.branches] == [(1, 1), (1, 1), (2, 2), (3, 3)]
    x = torch.randn(1, 128, 16, 16)
    out = conv(x)
    assert out.shape == x.shape
    # each group sees only its own channels: changing group 2's input changes group 2's output only
    y = x.clone()
    y[:, 64:96] += 1.0
    changed = (conv(y) - out).abs().amax(dim=(0, 2, 3)) > 0
    assert changed[64:96].all() and not changed[:64].any() and not changed[96:].any()
    with pytest.raises(ValueError, match="equal groups"):
        MultiScaleConv(100, groups=3)


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_crack_head_upsamples_x4_then_to_the_input_size(size):
    head = CrackHead()
    embeddings = torch.randn(2, 256, 4, 4)
    inner = head.up2(head.up1(embeddings))
    assert inner.shape == (2, 128, 16, 16)  # two x2 transposed convolutions
    assert head(embeddings, size).shape == (2, 1, *size)
    assert count_parameters(head).total == SAM_LITE_HEAD


def test_student_gives_sam_shaped_embeddings_on_the_teacher_grid():
    images = torch.rand(2, 3, 64, 64)
    student = SamLiteStudent(64)
    assert student(images).shape == (2, 256, 4, 4)  # stride 16, as SAM at 64 px
    assert SamLiteStudent(64, embed_grid=16)(images).shape == (2, 256, 16, 16)  # teacher ran at 256
    with pytest.raises(ValueError, match="64x64"):
        student(torch.rand(1, 3, 128, 128))


def _neck_grids(student: SamLiteStudent, images: torch.Tensor) -> tuple[int, int]:
    """(native grid out of the neck, grid returned): the two differ only where it resamples."""
    seen: list[tuple[int, ...]] = []
    hook = student.neck.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape[-2:])))
    try:
        out = student(images)
    finally:
        hook.remove()
    assert seen[0][0] == seen[0][1] and out.shape[-2] == out.shape[-1]
    return seen[0][0], out.shape[-1]


def test_student_stride_16_is_mobilesams_tinyvit_on_sams_grid_without_resampling():
    images = torch.rand(1, 3, 64, 64)
    lite16, lite32 = SamLiteStudent(64, stride=16), SamLiteStudent(64, stride=32)
    assert (lite16.native_grid, lite32.native_grid) == (4, 2)
    assert _neck_grids(lite16, images) == (4, 4)  # SAM's grid at 64 px, nothing resampled
    assert _neck_grids(lite32, images) == (2, 4)  # timm's stride 32, resampled x2
    assert _neck_grids(SamLiteStudent(64, embed_grid=16, stride=16), images) == (4, 16)  # teacher at 256
    # the last stage, twice the resolution at stride 16, still runs its 7x7 windows (padded 4 -> 7)
    assert lite16.stages[-1].downsample.conv2.conv.stride == (1, 1)
    assert lite32.stages[-1].downsample.conv2.conv.stride == (2, 2)
    with pytest.raises(ValueError, match="model.student_stride"):
        SamLiteStudent(64, stride=8)


def test_student_stride_changes_no_weight():
    lite16, lite32 = SamLiteStudent(64, stride=16).state_dict(), SamLiteStudent(64, stride=32).state_dict()
    assert {k: v.shape for k, v in lite16.items()} == {k: v.shape for k, v in lite32.items()}
    assert count_parameters(SamLiteStudent(64, stride=16)).total == SAM_LITE_TOTAL - SAM_LITE_HEAD


def test_student_stride_is_validated_and_params_yaml_sets_mobilesams():
    assert load_params("params.yaml").model.student_stride == 16
    with pytest.raises(ParamsError, match="model.student_stride: Input should be 16 or 32"):
        params_for("model.student_stride=24")


@pytest.mark.parametrize("stride", [16, 32])
def test_sam_lite_save_load_round_trip_keeps_the_stride(stride, tmp_path):
    params = params_for("model.family=sam_lite", "model.student_checkpoint=null", f"model.student_stride={stride}")
    torch.manual_seed(0)
    model = build_model(params).eval()
    save_trained_model(model, params, tmp_path)
    loaded, loaded_params = load_trained_model(tmp_path)
    assert loaded_params.model.student_stride == loaded.student.stride == stride
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images), atol=1e-5)


def test_sam_lite_model_saved_before_student_stride_reloads_at_stride_32(tmp_path):
    params = params_for("model.family=sam_lite", "model.student_checkpoint=null", "model.student_stride=32")
    torch.manual_seed(0)
    model = build_model(params).eval()
    save_trained_model(model, params, tmp_path)
    tree = yaml.safe_load((tmp_path / PARAMS_FILE).read_text())
    del tree["model"]["student_stride"]  # as every sam_lite model saved before the key existed
    (tmp_path / PARAMS_FILE).write_text(yaml.safe_dump(tree))
    loaded, loaded_params = load_trained_model(tmp_path)
    assert loaded_params.model.student_stride == 32
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images), atol=1e-5)


def test_count_params_sam_lite_matches_the_study(capsys):
    assert main(["count-params", "--params", DEFAULTS, "-S", "model.family=sam_lite", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts == {"trainable": SAM_LITE_TOTAL, "total": SAM_LITE_TOTAL}  # about 6.2M, as Table 1
    assert main(["count-params", "--params", DEFAULTS, "-S", "model.family=sam_lite",
                 "-S", "tuning.method=decoder", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable"] == SAM_LITE_HEAD


def test_the_schema_and_the_builders_name_the_same_families():
    # One list of names (params.ModelFamily): a family the schema accepts always has a builder.
    assert tuple(FAMILIES) == MODEL_FAMILIES


def test_each_family_is_labelled_by_its_architecture():
    # The label goes into run tags, reports and comparison tables: SAM's variant means nothing for the others.
    assert model_label(params_for("model.family=sam", "model.variant=vit_b")) == "sam/vit_b"
    assert model_label(params_for("model.family=sam_lite")) == "sam_lite/tiny_vit_5m"
    assert model_label(params_for("model.family=deeplabv3")) == "deeplabv3/resnet101"


def test_tuning_method_must_fit_the_family():
    for family in ("sam_lite", "deeplabv3"):
        with pytest.raises(ParamsError, match="tuning.method 'lora'.*full.*decoder"):
            params_for(f"model.family={family}", "tuning.method=lora")
    with pytest.raises(ValueError, match="tuning.method 'adapter'"):
        apply_head_tuning(nn.Linear(2, 2), nn.Linear(2, 2), "adapter", "deeplabv3")


def test_sam_lite_head_only_tuning_freezes_the_student_and_its_batchnorm():
    model = build_model(params_for("model.family=sam_lite", "model.student_checkpoint=null", "tuning.method=decoder"))
    assert count_parameters(model).trainable == SAM_LITE_HEAD
    model.train()
    norms = [m for m in model.student.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and model.head.training


# --- DeepLabV3 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_deeplab_file(tmp_path_factory) -> Path:
    """A random torchvision DeepLabV3-ResNet101 as published: 21 classes, auxiliary head."""
    from torchvision.models.segmentation import deeplabv3_resnet101

    torch.manual_seed(0)
    net = deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    path = tmp_path_factory.mktemp("deeplab") / "deeplabv3_resnet101_random.pth"
    torch.save(net.state_dict(), path)
    return path


def test_deeplab_loads_a_torchvision_state_dict_and_replaces_the_21_class_head(torchvision_deeplab_file):
    saved = torch.load(torchvision_deeplab_file, weights_only=True)
    model = build_model(params_for("model.family=deeplabv3", f"model.checkpoint={torchvision_deeplab_file}"))
    state = model.net.state_dict()
    assert torch.equal(state["backbone.layer4.2.conv3.weight"], saved["backbone.layer4.2.conv3.weight"])
    assert torch.equal(state["classifier.0.project.0.weight"], saved["classifier.0.project.0.weight"])
    assert saved["classifier.4.weight"].shape == (21, 256, 1, 1) and state["classifier.4.weight"].shape == (1, 256, 1, 1)
    assert not any(key.startswith("aux_classifier") for key in state)
    assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_deeplab_loads_an_imagenet_resnet101_backbone_and_rejects_other_files(tmp_path):
    from torchvision.models import resnet101

    torch.manual_seed(1)
    backbone = resnet101(weights=None).state_dict()
    torch.save(backbone, tmp_path / "resnet101.pth")
    net = build_deeplabv3(params_for("model.family=deeplabv3")).net
    load_deeplab_checkpoint(net, tmp_path / "resnet101.pth")
    assert torch.equal(net.backbone.layer1[0].conv1.weight, backbone["layer1.0.conv1.weight"])

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="neither a DeepLabV3"):
        load_deeplab_checkpoint(net, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not found.*model.checkpoint"):
        load_deeplab_checkpoint(net, tmp_path / "missing.pth")


def test_deeplab_training_step_with_focal_loss():
    torch.manual_seed(0)
    model = build_model(params_for("model.family=deeplabv3")).train()
    loss_fn = build_loss("focal", 0.0, focal_alpha=3.0, focal_gamma=2.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.rand(2, 3, 64, 64)
    masks = (torch.rand(2, 1, 64, 64) > 0.9).float()
    before = model.net.classifier[4].weight.detach().clone()
    loss = loss_fn(model(images), masks)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and loss.item() > 0
    assert not torch.equal(model.net.classifier[4].weight, before)
    with pytest.raises(ValueError, match="batch of one image"):
        model(images[:1])


# --- both families through the one training loop ------------------------------------------------


@pytest.mark.parametrize("family, extra", [
    ("sam_lite", ["model.student_checkpoint=null", "loss.kind=bce_lambda_dice", "loss.lambda=1", "loss.dice=smooth"]),
    # 4 training images, one optimiser step: ResNet-101 is still heavy on a CPU (about 10 s)
    pytest.param("deeplabv3", ["loss.kind=focal", "loss.focal_gamma=2", "train.optimizer=sgd", "train.lr=0.01",
                               "train.schedule=plateau", "data.shots_per_dataset=4"], marks=pytest.mark.slow),
])
def test_family_trains_one_epoch_through_train_from_params(family, extra, tiny_params, tmp_path):
    params = tiny_params(f"model.family={family}", "train.epochs=1", *extra)
    outcome = train_from_params(params, out_dir=tmp_path / "train", progress=False)
    assert len(outcome.fit.history) == 1 and 0.0 <= outcome.fit.best_val["f1"] <= 1.0
    loaded, loaded_params = load_trained_model(tmp_path / "train")
    assert loaded_params.model.family == family
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(images), outcome.model.eval()(images), atol=1e-5)


# --- limited supervision -----------------------------------------------------------------------


def test_few_shot_selection_counts_per_source_dataset():
    stems = [f"s{i:03d}" for i in range(100)]
    assert len(select_training_stems(stems, 0.01, None, seed=0)) == 1
    assert len(select_training_stems(stems, 0.1, None, seed=0)) == 10
    assert len(select_training_stems(stems, None, 1, seed=0)) == 1
    assert len(select_training_stems(stems, None, 5, seed=0)) == 5
    assert len(select_training_stems(stems[:3], 0.01, None, seed=0)) == 1  # at least one image
    assert select_training_stems(stems, None, None, seed=0) == stems

    groups = {stem: "a" if i < 50 else "b" if i < 80 else "c" for i, stem in enumerate(stems)}
    tenth = select_training_stems(stems, 0.1, None, seed=0, groups=groups)
    assert [groups[s] for s in tenth].count("a") == 5 and len(tenth) == 10  # 5 + 3 + 2
    one_shot = select_training_stems(stems, None, 1, seed=0, groups=groups)
    assert sorted(groups[s] for s in one_shot) == ["a", "b", "c"]
    assert len(select_training_stems(stems, 0.01, None, seed=0, groups=groups)) == 3


def test_few_shot_selection_is_seeded_and_order_independent():
    stems = [f"img{i}" for i in range(200)]
    first = select_training_stems(stems, 0.05, None, seed=3)
    shuffled = stems[:]
    random.Random(0).shuffle(shuffled)
    assert select_training_stems(shuffled, 0.05, None, seed=3) == first == sorted(first)
    assert select_training_stems(stems, 0.05, None, seed=4) != first


def test_dataset_pattern_names_source_datasets():
    stems = ["cfd_001", "cfd_002", "crack500_7", "deepcrack_x"]
    assert groups_from_pattern(stems, r"^([^_]+)_") == {"cfd_001": "cfd", "cfd_002": "cfd",
                                                         "crack500_7": "crack500", "deepcrack_x": "deepcrack"}
    with pytest.raises(DatasetError, match="matches no source dataset"):
        groups_from_pattern(["plain"], r"^([^_]+)_")
    with pytest.raises(ParamsError, match="not both"):
        params_for("data.train_fraction=0.1", "data.shots_per_dataset=1")


def test_build_loaders_trains_on_the_seeded_subset_and_records_it(tiny_params, tiny_prepared, tmp_path):
    all_train = json.loads((tiny_prepared / "manifest.json").read_text())["splits"]["train"]
    loader, _ = build_loaders(tiny_params("data.shots_per_dataset=2"))
    assert len(loader.dataset) == 2 and set(loader.dataset.stems) <= set(all_train)
    again, _ = build_loaders(tiny_params("data.shots_per_dataset=2"))
    assert again.dataset.stems == loader.dataset.stems
    half, _ = build_loaders(tiny_params("data.train_fraction=0.5"))
    assert len(half.dataset) == round(len(all_train) / 2)

    params = tiny_params("data.shots_per_dataset=2", "train.epochs=1")
    train_from_params(params, out_dir=tmp_path / "train", progress=False)
    record = json.loads((tmp_path / "train" / SUBSET_FILE).read_text())
    assert record["stems"] == loader.dataset.stems and record["shots_per_dataset"] == 2 and record["count"] == 2


# --- one sweep over every method ----------------------------------------------------------------


def test_methods_compare_space_sets_each_family_with_its_own_defaults(tmp_path):
    from search.trial import winning_values
    from search.space import SpaceError, load_space

    space = load_space("methods-compare")
    grid = space.grid()
    methods: dict[str, set[str]] = {}
    for chosen in grid:
        trial = space.trial_params({}, chosen)
        methods.setdefault(trial.model.family, set()).add(trial.tuning.method)
    assert len(grid) == 8
    assert methods == {"sam": {"layernorm", "lora", "adapter", "decoder"}, "sam_lite": {"full"}, "deeplabv3": {"full"}}

    deeplab = [chosen for chosen in grid if chosen["preset"] == "deeplabv3"]
    assert sorted(chosen["loss.focal_gamma"] for chosen in deeplab) == [1.0, 2.0, 4.0]
    trial = space.trial_params({"model": {"checkpoint": "checkpoints/sam_vit_b.pth"}}, deeplab[0])
    assert trial.model.checkpoint is None  # a SAM checkpoint of the base params never reaches DeepLabV3
    assert (trial.loss.kind, trial.loss.focal_alpha, trial.train.optimizer, trial.train.schedule) == (
        "focal", 3.0, "sgd", "plateau")
    lite = space.trial_params({}, {"preset": "sam_lite"})
    assert (lite.loss.kind, lite.loss.lambda_, lite.loss.dice) == ("bce_lambda_dice", 1.0, "smooth")
    best = winning_values(space, deeplab[0])  # what best_params.yaml and the retrain command get
    assert "preset" not in best and best["model.family"] == "deeplabv3" and best["loss.focal_gamma"] == 1.0

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"presets": {"x": {"model.family": "deeplabv3", "tuning.method": "lora"}},
                                   "parameters": {"preset": {"type": "categorical", "choices": ["x"]}}}))
    with pytest.raises(SpaceError, match="preset.*tuning.method .lora. is a SAM method"):
        load_space(str(bad))


# --- done-when: every family through `dvc repro`, one MLflow experiment --------------------------

LITE = {
    "model": {"family": "sam_lite"},
    "distill": {"epochs": 1, "batch_size": 8},
    "loss": {"kind": "bce_lambda_dice", "lambda": 1.0, "dice": "smooth"},  # the study's BCE + smooth Dice
    "data": {"train_fraction": 0.5},
    "train": {"epochs": 1},
}
EVAL_METRICS = {"test_f1", "test_iou", "test_ods", "test_ois", "test_ap", "best_val_f1"}


def _pipeline_helpers():
    sys.path.insert(0, str(Path(__file__).parent))
    import test_pipeline

    return test_pipeline


def _runs_by_family(project: Path) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("crackops").experiment_id
    return client, {run.data.tags["model.family"]: run for run in client.search_runs([experiment])}


def _check_lite_run(client, run, tmp_path: Path) -> None:
    assert EVAL_METRICS <= set(run.data.metrics)
    subset = json.loads(Path(client.download_artifacts(run.info.run_id, SUBSET_FILE, str(tmp_path))).read_text())
    assert run.data.params["data.train_images"] == str(subset["count"]) == str(len(subset["stems"]))


@pytest.mark.slow
def test_dvc_repro_sam_lite(tmp_path):
    tp = _pipeline_helpers()
    project = tp.make_project(tmp_path, LITE)
    first = tp.run([str(tp.BIN / "dvc"), "repro"], project)
    assert tp.ran_stages(first.stdout) == ["prepare", "embed", "distill", "train", "evaluate", "register"]
    index = json.loads((project / "outputs/distill/embeddings/index.json").read_text())
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert index["count"] == manifest["counts"]["train"]
    assert json.loads((project / "outputs/register/registered.json").read_text())["version"] == "1"
    client, runs = _runs_by_family(project)
    _check_lite_run(client, runs["sam_lite"], tmp_path)


@pytest.mark.slow
def test_dvc_repro_sam_lite_then_deeplabv3_in_one_experiment(tmp_path):
    tp = _pipeline_helpers()
    dvc = str(tp.BIN / "dvc")
    project = tp.make_project(tmp_path, LITE)
    tp.run([dvc, "repro"], project)

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"]["family"] = "deeplabv3"
    params["loss"].update({"kind": "focal", "focal_alpha": 3.0, "focal_gamma": 2.0})
    params["train"].update({"optimizer": "sgd", "lr": 0.01, "schedule": "plateau"})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    second = tp.run([dvc, "repro"], project)
    assert tp.ran_stages(second.stdout) == ["embed", "distill", "train", "evaluate", "register"]
    assert json.loads((project / "outputs/register/registered.json").read_text())["version"] == "2"

    # distill.* changes rerun only the distill stage for other families: its placeholder is unchanged
    params["distill"]["epochs"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert tp.ran_stages(tp.run([dvc, "repro"], project).stdout) == ["distill"]

    client, runs = _runs_by_family(project)
    assert set(runs) == {"sam_lite", "deeplabv3"}
    _check_lite_run(client, runs["sam_lite"], tmp_path)
    # Comparable names; MLflow's system metrics (system/...) depend on how long each run lasted.
    names = {family: {name for name in run.data.metrics if not name.startswith("system/")} for family, run in runs.items()}
    assert names["sam_lite"] == names["deeplabv3"]

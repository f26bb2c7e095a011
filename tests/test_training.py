"""The training loop: outputs, best checkpoint, resume, early stopping, callbacks, schedules."""
from __future__ import annotations

import json
import math

import pytest
import torch

from pipeline.training.callbacks import Callback, EpochResult, FitResult
from pipeline.training.loop import LoopConfig, NonFiniteLossError, fit
from pipeline.training.run import Selection, build_loaders, history_csv, train_from_params
from pipeline.training.schedules import LrSchedule, build_optimizer, lr_factor


class Recorder(Callback):
    def __init__(self, stop_after: int | None = None) -> None:
        self.events, self.stop_after = [], stop_after

    def on_train_start(self, total_epochs):
        self.events.append(("start", total_epochs))

    def on_epoch_end(self, result, control):
        self.events.append(("epoch", result.epoch, result.val["f1"]))
        if self.stop_after is not None and result.epoch + 1 >= self.stop_after:
            raise KeyboardInterrupt  # what a killed or pruned run looks like to the loop

    def on_train_end(self, result):
        self.events.append(("end", result.best_epoch))


def test_outputs_written_and_best_epoch_kept(tmp_path, tiny_params):
    out = tmp_path / "train"
    recorder = Recorder()
    outcome = train_from_params(tiny_params("train.epochs=3"), [recorder], out_dir=out, progress=False)
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "params.yaml", "metrics.json", "history.csv"}
    assert not (tmp_path / "train.partial").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    f1s = [h.val["f1"] for h in outcome.fit.history]
    assert metrics["best_epoch"] == f1s.index(max(f1s)) + 1
    assert metrics["val"]["f1"] == max(f1s)
    assert [e[0] for e in recorder.events] == ["start", "epoch", "epoch", "epoch", "end"]
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,train_loss,lr,")


def test_killed_run_leaves_no_output_and_resumes_to_the_same_result(tmp_path, tiny_params):
    params = tiny_params("train.epochs=3")
    reference = train_from_params(params, out_dir=tmp_path / "reference", progress=False)

    out = tmp_path / "train"
    with pytest.raises(KeyboardInterrupt):
        train_from_params(params, [Recorder(stop_after=2)], out_dir=out, progress=False)
    assert not out.exists()  # nothing DVC could take for a finished stage
    assert (tmp_path / "train.partial" / "last.pt").is_file()

    resumed = train_from_params(params, out_dir=out, progress=False)
    assert [h.epoch for h in resumed.fit.history] == [0, 1, 2]
    assert [h.train_loss for h in resumed.fit.history] == pytest.approx(
        [h.train_loss for h in reference.fit.history], rel=1e-4)
    assert resumed.fit.best_val["f1"] == pytest.approx(reference.fit.best_val["f1"], abs=1e-6)


def test_changed_params_do_not_resume_stale_state(tmp_path, tiny_params):
    out = tmp_path / "train"
    with pytest.raises(KeyboardInterrupt):
        train_from_params(tiny_params("train.epochs=3"), [Recorder(stop_after=1)], out_dir=out, progress=False)
    outcome = train_from_params(tiny_params("train.epochs=3", "train.lr=1e-4"), out_dir=out, progress=False)
    assert len(outcome.fit.history) == 3 and outcome.fit.history[0].epoch == 0



@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_unreadable_resume_state_is_discarded_with_a_warning(tmp_path, tiny_params, capsys, name):
    # A truncated file (full disk, cut-short copy) once failed every rerun with a raw torch traceback.
    params = tiny_params("train.epochs=2")
    out = tmp_path / "train"
    with pytest.raises(KeyboardInterrupt):
        train_from_params(params, [Recorder(stop_after=1)], out_dir=out, progress=False)
    state = tmp_path / "train.partial" / name
    state.write_bytes(state.read_bytes()[:100])
    capsys.readouterr()
    outcome = train_from_params(params, out_dir=out, progress=False)
    assert [h.epoch for h in outcome.fit.history] == [0, 1]  # started over
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"warning: cannot read resume state {state}; discarding it and starting training over"]
    assert "resuming" not in captured.out and (out / "model.safetensors").is_file()


def test_early_stopping_stops_when_f1_does_not_improve(tiny_params):
    # A vanishing learning rate freezes the model, so validation F1 cannot improve after epoch 1.
    outcome = train_from_params(tiny_params("train.epochs=6", "train.lr=1e-12", "train.early_stopping_patience=2"),
                                progress=False)
    assert outcome.fit.stopped_early
    assert len(outcome.fit.history) == 3


def test_non_finite_loss_is_reported(tiny_params):
    params = tiny_params()
    from pipeline.tuning.build import build_model

    model = build_model(params)
    train_loader, val_loader = build_loaders(params)
    optimizer = build_optimizer(list(model.parameters()), params.train)

    def nan_loss(logits, target):
        return logits.mean() * math.nan

    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 1"):
        fit(model, train_loader, val_loader, nan_loss, optimizer, LrSchedule(optimizer, params.train, 1),
            LoopConfig(epochs=1, progress=False))


def test_best_weights_are_restored_into_the_model(tiny_params):
    outcome = train_from_params(tiny_params("train.epochs=3"), progress=False)
    _, val_loader = build_loaders(tiny_params())
    from pipeline.metrics import SegmentationMeter
    from pipeline.training.batches import predict_batches

    meter = SegmentationMeter(with_tolerance=False)
    for probs, masks in predict_batches(outcome.model, val_loader, torch.device("cpu")):
        meter.update(probs, masks)
    assert meter.compute()["f1"] == pytest.approx(outcome.fit.best_f1, abs=1e-6)


@pytest.mark.parametrize(
    "step, schedule, warmup, power, expected",
    [
        (0, "cosine", 0, 0, 1.0),
        (50, "cosine", 0, 0, 0.5),  # half-way down the cosine
        (100, "cosine", 0, 0, 0.0),
        (0, "poly", 300, 6, 1 / 300),  # CrackSAM: linear warm-up over 300 iterations
        (299, "poly", 300, 6, 1.0),
        (300, "poly", 300, 6, 1.0),
        (650, "poly", 300, 6, 0.5**6),  # half-way through the decay, power 6
        (10, "constant", 0, 0, 1.0),
    ],
)
def test_lr_factors(step, schedule, warmup, power, expected):
    total = 1000 if schedule == "poly" else 100
    assert lr_factor(step, total, schedule, warmup, power) == pytest.approx(expected)


def test_plateau_and_multistep_schedules_step_per_epoch(tiny_params):
    params = tiny_params("train.schedule=multistep", "train.milestones=[1]", "train.gamma=0.5", "train.lr=0.01")
    layer = torch.nn.Linear(1, 1)
    optimizer = build_optimizer(list(layer.parameters()), params.train)
    schedule = LrSchedule(optimizer, params.train, steps_per_epoch=5)
    schedule.step_iteration()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    schedule.step_epoch({"f1": 0.3, "loss": 1.0})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)

    params = tiny_params("train.schedule=plateau", "train.plateau_patience=0", "train.gamma=0.1", "train.lr=0.01")
    optimizer = build_optimizer(list(layer.parameters()), params.train)
    schedule = LrSchedule(optimizer, params.train, steps_per_epoch=5)
    schedule.step_epoch({"f1": 0.5, "loss": 1.0})
    schedule.step_epoch({"f1": 0.4, "loss": 0.5})  # no improvement of validation F1: decay
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)

    # The DeepLabV3 study watches the validation loss: a lower loss is progress, whatever F1 does.
    params = tiny_params("train.schedule=plateau", "train.plateau_patience=0", "train.gamma=0.1", "train.lr=0.01",
                         "train.plateau_metric=val_loss")
    optimizer = build_optimizer(list(layer.parameters()), params.train)
    schedule = LrSchedule(optimizer, params.train, steps_per_epoch=5)
    schedule.step_epoch({"f1": 0.5, "loss": 1.0})
    schedule.step_epoch({"f1": 0.4, "loss": 0.5})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    schedule.step_epoch({"f1": 0.6, "loss": 0.7})  # F1 rose but the loss did not fall: decay
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)


def test_training_on_crackforest_improves_f1(tmp_path, cfd_root):
    """Real cracks: F1 must rise above its first-epoch value within a few epochs on the CPU."""
    from pipeline.data import prepare_dataset
    from pipeline.params import load_params

    prepared = tmp_path / "cfd"
    prepare_dataset(cfd_root, prepared, img_size=256, val_fraction=0.15, test_fraction=0.15, seed=0)
    params = load_params("missing.yaml", [
        "data.img_size=256", f"data.prepared_dir={prepared}", "mlflow.enabled=false",
        "train.epochs=6", "train.batch_size=2", "train.lr=3e-4",
    ])
    history = train_from_params(params, progress=False).fit.history
    f1 = [epoch.val["f1"] for epoch in history]
    assert max(f1[1:]) > f1[0], f1
    assert history[-1].train_loss < history[0].train_loss


def test_history_csv_keeps_a_metric_missing_from_early_epochs() -> None:
    """A run resumed from a checkpoint written before a metric existed still writes its history."""
    def epoch(index: int, val: dict[str, float]) -> EpochResult:
        return EpochResult(epoch=index, train_loss=0.5, val=val, lr=1e-4, seconds=1.0, images_per_second=2.0,
                           is_best=True)

    result = FitResult(history=[epoch(0, {"f1": 0.1}), epoch(1, {"f1": 0.2, "pixel_ap": 0.3})])
    header, first, second = history_csv(result).splitlines()
    assert header.split(",")[-2:] == ["val_f1", "val_pixel_ap"]
    assert first.endswith(",0.1,") and second.endswith(",0.2,0.3")


def test_validation_loss_is_the_training_loss_on_the_validation_split(tiny_params):
    """val_loss (what `train.plateau_metric: val_loss` watches): the batch-size-weighted mean of the
    training loss over the validation split, for the epoch's weights."""
    from pipeline.losses import build_loss
    from pipeline.training.batches import logit_batches

    params = tiny_params("train.epochs=1", "train.batch_size=2")
    outcome = train_from_params(params, progress=False)  # one epoch: the kept weights are the epoch's
    loss = params.loss
    loss_fn = build_loss(loss.kind, loss.lambda_, loss.dice, loss.focal_alpha, loss.focal_gamma)
    _, val_loader = build_loaders(params)
    total, seen = 0.0, 0
    for logits, masks in logit_batches(outcome.model, val_loader, torch.device("cpu")):
        total += loss_fn(logits, masks).item() * masks.shape[0]
        seen += masks.shape[0]
    (epoch,) = outcome.fit.history
    assert epoch.val["loss"] == pytest.approx(total / seen, rel=1e-5)
    assert epoch.metrics()["val_loss"] == epoch.val["loss"]


class _StopAfter(Callback):
    """Stops training through the control flag after ``epochs`` epochs (no exception)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, result, control):
        if result.epoch + 1 >= self.epochs:
            control.stop(f"enough after {self.epochs}")


def test_a_callback_stops_training_through_the_control_flag(tmp_path, tiny_params):
    out = tmp_path / "train"
    outcome = train_from_params(tiny_params("train.epochs=4"), [_StopAfter(2)], out_dir=out, progress=False)
    assert len(outcome.fit.history) == 2 and outcome.fit.control.reason == "enough after 2"
    assert not outcome.fit.control.pruned and not outcome.fit.stopped_early
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 2


@pytest.mark.parametrize("selection", [Selection("iou", "max"), Selection("loss", "min")])
def test_the_best_epoch_is_chosen_by_the_selection_metric(tiny_params, selection):
    outcome = train_from_params(tiny_params("train.epochs=3"), progress=False, selection=selection)
    values = [item.val[selection.metric] for item in outcome.fit.history]
    pick = max if selection.mode == "max" else min
    assert outcome.fit.best_epoch == values.index(pick(values))


def test_sweep_metrics_map_to_selections():
    assert Selection.for_sweep_metric("val_iou", "maximize") == Selection("iou", "max")
    assert Selection.for_sweep_metric("val_loss", "minimize") == Selection("loss", "min")
    assert Selection.for_sweep_metric("train_loss", "minimize") == Selection()  # not a validation score


def test_the_training_layer_imports_no_tracker():
    import subprocess
    import sys

    code = "import sys, pipeline.training.run, pipeline.training.loop; print('mlflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "False"

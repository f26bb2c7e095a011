"""The training loop's plug-in points: MLflow logging and sweep pruning hook in here."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EpochResult:
    """What one epoch produced; passed to every callback after validation."""

    epoch: int
    train_loss: float
    val: dict[str, float]
    lr: float
    seconds: float
    images_per_second: float
    is_best: bool

    def metrics(self) -> dict[str, float]:
        """Flat metric names shared by DVC plots, MLflow and sweeps."""
        flat = {"train_loss": self.train_loss, "lr": self.lr, "epoch_seconds": self.seconds,
                "images_per_second": self.images_per_second}
        flat.update({f"val_{name}": value for name, value in self.val.items()})
        return flat


@dataclass
class TrainerControl:
    """What callbacks tell the loop, as Hugging Face's ``TrainerControl``: they set it, never raise.

    ``stop`` ends training after the current epoch; ``pruned`` says a scheduler (Optuna's pruner)
    judged the run not worth finishing, which its caller reports differently from a finished run.
    """

    should_stop: bool = False
    pruned: bool = False
    reason: str = ""

    def stop(self, reason: str, pruned: bool = False) -> None:
        self.should_stop, self.pruned, self.reason = True, pruned, reason


@dataclass
class FitResult:
    """The loop's return value."""

    history: list[EpochResult] = field(default_factory=list)
    best_epoch: int = -1
    best_val: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False  # by train.early_stopping_patience
    control: TrainerControl = field(default_factory=TrainerControl)  # what the callbacks asked for

    @property
    def best_f1(self) -> float:
        return self.best_val.get("f1", 0.0)


class Callback:
    """Override what you need. To stop training, set ``control`` in ``on_epoch_end``; an exception
    raised from a hook is an error (or an interrupt) and ends training as one."""

    def on_train_start(self, total_epochs: int) -> None:
        pass

    def on_resume(self, history: list[EpochResult]) -> None:
        """Called after ``on_train_start`` when the loop resumed: ``history`` holds the epochs before."""

    def on_epoch_end(self, result: EpochResult, control: TrainerControl) -> None:
        pass

    def on_train_end(self, result: FitResult) -> None:
        pass


class PrintCallback(Callback):
    """One line per epoch on stdout, for logs that outlive the progress bar."""

    def on_epoch_end(self, result: EpochResult, control: TrainerControl) -> None:
        val = result.val
        print(
            f"epoch {result.epoch + 1}: train_loss {result.train_loss:.4f}  val P {val['precision']:.3f} "
            f"R {val['recall']:.3f} F1 {val['f1']:.3f} IoU {val['iou']:.3f}  "
            f"({result.seconds:.1f}s, {result.images_per_second:.1f} img/s){'  *best' if result.is_best else ''}",
            flush=True,
        )

"""Per-epoch metrics to MLflow, cheap enough not to slow training."""
from __future__ import annotations

import logging

import mlflow
from mlflow.utils.async_logging.run_operations import RunOperations

from pipeline.training.callbacks import Callback, EpochResult, FitResult, TrainerControl

logger = logging.getLogger(__name__)


def epoch_metric_key(name: str) -> str:
    """The MLflow key of a per-epoch metric of ``EpochResult.metrics()``: ``train/loss``, ``val/f1``, ...

    MLflow's run page draws each key prefix as its own section of charts above the unprefixed
    metrics, so the training curves come first and the ~70 single-step evaluation scores
    (``test_f1``, ...) after them. Elsewhere (DVC plots, sweeps) the flat names stay.
    """
    if name.startswith("val_"):
        return f"val/{name[len('val_'):]}"
    return f"train/{name[len('train_'):] if name.startswith('train_') else name}"


def epoch_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` under their MLflow keys (:func:`epoch_metric_key`)."""
    return {epoch_metric_key(name): value for name, value in metrics.items()}


class MlflowCallback(Callback):
    """Log ``EpochResult.metrics()`` at ``step = epoch + 1`` under :func:`epoch_metric_key` names:
    one batched call per epoch.

    Logging is asynchronous so a slow or remote tracking server never stalls the loop;
    :meth:`flush` (called at train end, and by tracked training on failure) waits for it.
    """

    def __init__(self, run_id: str | None = None, synchronous: bool = False) -> None:
        self.run_id = run_id  # set by tracked training when its run starts; other callbacks read it here
        self.synchronous = synchronous
        self._pending: list[RunOperations] = []

    def on_resume(self, history: list[EpochResult]) -> None:
        """Log the resumed epochs the run lacks (asynchronous logging dies with a killed process), so
        a continued run's curves are whole from epoch 1."""
        logged = {metric.step for metric in
                  mlflow.MlflowClient().get_metric_history(self.run_id, epoch_metric_key("train_loss"))}
        for result in history:
            if result.epoch + 1 not in logged:
                mlflow.log_metrics(epoch_metrics(result.metrics()), step=result.epoch + 1, run_id=self.run_id,
                                   synchronous=True)

    def on_epoch_end(self, result: EpochResult, control: TrainerControl) -> None:
        operation = mlflow.log_metrics(epoch_metrics(result.metrics()), step=result.epoch + 1, run_id=self.run_id,
                                       synchronous=self.synchronous)
        if operation is not None:
            self._pending.append(operation)

    def on_train_end(self, result: FitResult) -> None:
        # The trained model is written after this hook: a tracking hiccup must not lose it.
        try:
            self.flush()
        except Exception as error:  # noqa: BLE001 - any store failure is only a warning here
            logger.warning("some epoch metrics did not reach MLflow: %s", error)

    def flush(self) -> None:
        """Wait until every queued metric is stored; raises what the store raised."""
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.wait()

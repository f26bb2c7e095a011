"""Optimisers and learning-rate schedules of the studies (SAC cosine, CrackSAM poly with warm-up)."""
from __future__ import annotations

import math

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, MultiStepLR, ReduceLROnPlateau

from pipeline.params import TrainParams


def build_optimizer(params: list[torch.nn.Parameter], train: TrainParams) -> Optimizer:
    """AdamW (both SAM studies) or SGD with momentum (the DeepLabV3 study)."""
    if not params:
        raise ValueError("the model has no trainable parameters; check tuning.method")
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)


def lr_factor(step: int, total_steps: int, schedule: str, warmup: int, power: float) -> float:
    """Multiplier of the base learning rate after ``step`` optimiser steps (warm-up is linear)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1.0 - progress) ** power
    return 1.0


class LrSchedule:
    """One object for every schedule: per-iteration ones step each batch, the others each epoch."""

    def __init__(self, optimizer: Optimizer, train: TrainParams, steps_per_epoch: int) -> None:
        self.kind = train.schedule
        total = train.epochs * steps_per_epoch
        self.iteration = None
        self.epoch = None
        if self.kind in ("cosine", "poly", "constant"):
            self.iteration = LambdaLR(
                optimizer, lambda step: lr_factor(step, total, self.kind, train.warmup_iters, train.poly_power)
            )
        elif self.kind == "multistep":
            self.epoch = MultiStepLR(optimizer, milestones=train.milestones, gamma=train.gamma)
        elif self.kind == "plateau":
            # val_f1 should rise, val_loss fall (the DeepLabV3 study: lr x0.1 after 10 epochs without a lower loss).
            self.watched = train.plateau_metric
            mode = "min" if self.watched == "val_loss" else "max"
            self.epoch = ReduceLROnPlateau(optimizer, mode=mode, factor=train.gamma, patience=train.plateau_patience)

    def step_iteration(self) -> None:
        if self.iteration is not None:
            self.iteration.step()

    def step_epoch(self, val: dict[str, float]) -> None:
        """After validation; ``val``: the epoch's validation scores (``f1``, ``loss``, ...)."""
        if isinstance(self.epoch, ReduceLROnPlateau):
            self.epoch.step(val[self.watched.removeprefix("val_")])
        elif self.epoch is not None:
            self.epoch.step()

    def state_dict(self) -> dict:
        scheduler = self.iteration or self.epoch
        return scheduler.state_dict() if scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        scheduler = self.iteration or self.epoch
        if scheduler is not None and state:
            scheduler.load_state_dict(state)

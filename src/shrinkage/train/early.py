"""Early selection: prune to the budget part-way through training, train the rest with the zeros held.

Pruning after training leaves only the recovery epochs to adapt the kept weights to
what was removed. Selecting after ``target.select_after_epochs`` of the run's epochs
(the groups the budget removes are chosen as after training: Taylor damage per MAC,
measured exactly on the compacted model) leaves the rest of the same schedule to
train the smaller network, at the learning rates the schedule still has; the run
costs as many epochs as plain training, which is what it is compared with. Groups
chosen early are the ones pruning finds weak early in training (You et al., 2020,
"Drawing early-bird tickets", report that these settle within the first tenth to
fifth of training).

The removed weights are held at zero after every optimizer step (momentum and weight
decay would revive them); the selection after training then finds them already zero
and the budget already met. A checkpoint stores the names of the masked parameters;
on resume their zeros are the mask again (every held weight is exactly zero, and a
kept weight that happens to be exactly zero as well stays so harmlessly).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from shrinkage.config import RunConfig, SelectionMethod
from shrinkage.data import ImageDataset
from shrinkage.optim import ZeroMask

log = logging.getLogger(__name__)


class EarlySelection:
    """Prunes ``model`` to ``config.target`` once, after epoch ``target.select_after_epochs``
    of the training phase, then keeps the removed weights at zero."""

    def __init__(self, config: RunConfig, model: nn.Module, train: ImageDataset, example: Tensor) -> None:
        target = config.target
        if target is None or target.select_after_epochs is None:
            raise ValueError("EarlySelection needs a target with select_after_epochs")
        self.config = config
        self.model = model
        self.train = train
        self.example = example
        self.epoch: int = target.select_after_epochs
        self.mask: ZeroMask | None = None
        self.details: dict[str, Any] | None = None

    def due(self, phase_index: int, epoch: int) -> bool:
        """True right after the epoch of the training phase (index 0) at which to select."""
        return self.mask is None and phase_index == 0 and epoch == self.epoch

    def select_(self) -> None:
        """Choose the groups under the budget on the model as it is now, zero them in place."""
        # imported here: compress builds on the trainer's module (first_difference)
        from shrinkage.train.compress import selection_for

        target = self.config.target
        assert target is not None
        was_training = self.model.training
        selector = selection_for(self.config, self.model, SelectionMethod.PRUNE, tuple(self.example.shape[1:]),
                                 self.train)  # fmt: skip
        with torch.random.fork_rng(devices=[]):  # selection draws nothing the training run should see
            selected = selector.select(self.model.eval(), self.example, target.budget())
        self.model.train(was_training)
        assert selected.mask is not None  # pruning always holds its zeros with a mask
        keep = selected.mask.keep_by_name(selected.model)
        self.mask = ZeroMask.for_names(self.model, keep)
        self.mask.apply_()
        self.details = {"epoch": self.epoch, **selected.details}
        log.info("early selection after epoch %d: %d weights held at zero from now on (%s)",
                 self.epoch, self.mask.zero_count, selected.details.get("side_by_side"))  # fmt: skip

    def after_step(self) -> None:
        if self.mask is not None:
            self.mask.apply_()

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps: the masked parameters' names and the selection's summary."""
        if self.mask is None:
            return None
        return {"epoch": self.epoch, "parameters": self.mask.names(self.model), "details": self.details}

    def restore(self, state: dict[str, Any] | None) -> None:
        """From a checkpoint's :meth:`state` (None: the selection has not happened yet)."""
        if state is None:
            return
        params = dict(self.model.named_parameters())
        self.mask = ZeroMask.for_names(self.model, {name: params[name] != 0 for name in state["parameters"]})
        self.details = state.get("details")

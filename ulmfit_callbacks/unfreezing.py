"""Gradual unfreezing (ULMFiT Sec. 3.3): last group first, one more group each epoch."""
from __future__ import annotations

from typing import Sequence

from fastai.callback.core import TrainEvalCallback

from .base import ResumableCallback

__all__ = ["GradualUnfreezing"]


class GradualUnfreezing(ResumableCallback):
    """Train only the last parameter group in the first epoch, one more group (from the top) each
    epoch after, then all of them.

    ``schedule`` optionally gives the number of trainable groups per epoch, e.g. ``[1, 2, 3]``
    (fastai's freeze_to(-1), (-2), (-3), then unfreeze); after its last entry all groups train.
    Epochs are counted across ``fit`` calls, so the paper's one-fit recipe and a sequence of
    one-epoch fits behave alike; :meth:`restart` starts over.

    **Optimizer state is kept**: unfreezing uses ``learn.opt.freeze_to``, not
    ``learn.freeze_to`` (which clears every group's state), so the Adam moments of groups that
    are already training carry on. Frozen groups have no gradient, so no update and no weight
    decay; fastai keeps BatchNorm parameters trainable in frozen groups (``train_bn=True``), and
    our classifier's only BatchNorm layers are in the head, the top group.

    ``method="grad_mask"`` keeps ``requires_grad`` untouched and drops the gradients of frozen
    groups before each step instead: correct under DistributedDataParallel, where flipping
    ``requires_grad`` after wrapping is unsafe (the backward still computes those gradients).
    """
    order = TrainEvalCallback.order + 1
    _state_attrs = ("epochs_done",)

    def __init__(self, schedule: Sequence[int] | None = None, method: str = "requires_grad"):
        if method not in ("requires_grad", "grad_mask"):
            raise ValueError(f"method must be 'requires_grad' or 'grad_mask', got {method!r}")
        if schedule is not None:
            schedule = [int(s) for s in schedule]
            if not schedule or any(s < 1 for s in schedule):
                raise ValueError(f"schedule entries must be >= 1 trainable groups, got {schedule}")
            if any(b < a for a, b in zip(schedule, schedule[1:])):
                raise ValueError(f"schedule must not decrease, got {schedule}")
        self.schedule, self.method = schedule, method
        self.epochs_done = 0
        self.n_trainable = None

    def restart(self):
        self.epochs_done = 0

    def trainable_groups(self, epoch: int, n_groups: int) -> int:
        """Number of trainable (top) groups in epoch ``epoch`` (0-based, counted across fits)."""
        if self.schedule is None:
            return min(epoch + 1, n_groups)
        return self.schedule[epoch] if epoch < len(self.schedule) else n_groups

    def before_fit(self):
        n = len(self.opt.param_lists)
        if self.schedule is not None and max(self.schedule) > n:
            raise ValueError(f"unfreezing schedule {self.schedule} asks for more groups than the optimizer has ({n})")
        self._resumed = False

    def before_epoch(self):
        n = len(self.opt.param_lists)
        k = self.trainable_groups(self.epochs_done, n)
        self.n_trainable = k
        if self.method == "requires_grad":
            self.opt.freeze_to(n - k)
        else:
            self.opt.freeze_to(0)

    def before_step(self):
        if self.method != "grad_mask" or self.n_trainable is None:
            return
        for pg in self.opt.param_lists[: len(self.opt.param_lists) - self.n_trainable]:
            for p in pg:
                p.grad = None

    def after_train(self):
        self.epochs_done += 1

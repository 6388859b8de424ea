"""Small helpers shared by the callback tests."""
import inspect

import torch
from fastai.callback.core import Callback


class LRTrace(Callback):
    """Records every group's lr at each training step (after all schedulers ran)."""
    order = 100

    def __init__(self):
        self.lrs, self.seq_lens = [], []

    def before_step(self):
        self.lrs.append([h["lr"] for h in self.opt.hypers])
        self.seq_lens.append(self.learn.xb[0].shape[1])


class Boom(Exception):
    pass


class CrashAt(Callback):
    """Raises an ordinary exception at training iteration ``at`` (counted over the fit) or in validation."""
    order = 99

    def __init__(self, at=None, in_validation_epoch=None):
        self.at, self.in_validation_epoch, self.count = at, in_validation_epoch, 0

    def after_batch(self):
        if self.training:
            self.count += 1
            if self.at is not None and self.count == self.at:
                raise Boom(f"crash at iteration {self.count}")
        elif self.in_validation_epoch is not None and self.epoch == self.in_validation_epoch:
            raise Boom("crash during validation")


def event_methods(cb_cls):
    """Public methods of a callback class named like events (before_/after_)."""
    return [n for n, _ in inspect.getmembers(cb_cls, inspect.isfunction)
            if n.startswith(("before_", "after_")) and not n.startswith("_")]


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class GroupProbe(Callback):
    """Per epoch: which groups require grad, and which changed over the epoch."""
    order = 100

    def __init__(self):
        self.trainable, self.changed, self.before = [], [], None

    def before_train(self):
        self.trainable.append([all(p.requires_grad for p in pg) for pg in self.opt.param_lists])
        self.before = [[p.detach().clone() for p in pg] for pg in self.opt.param_lists]

    def after_train(self):
        self.changed.append([any(not torch.equal(a, p) for a, p in zip(b, pg))
                             for b, pg in zip(self.before, self.opt.param_lists)])

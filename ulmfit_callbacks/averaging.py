"""ASGD / NT-ASGD weight averaging (Merity et al. 2017, Sec. 3 and Algorithm 1).

Split as ``torch.optim.swa_utils`` is: :class:`WeightAverager` (the running mean and its count),
:func:`update_bn` (BatchNorm statistics for averaged weights), :func:`nt_asgd_trigger` (when to
start, a pure function) and :class:`ASGDWeightAveraging`, a thin fastai callback that uses
them from fastai's public events.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from .base import ResumableCallback

__all__ = ["WeightAverager", "update_bn", "nt_asgd_trigger", "ASGDWeightAveraging"]


class WeightAverager:
    r"""The running mean of named tensors, in fp32:

    .. math:: \bar w_k = \bar w_{k-1} + \frac{w_k - \bar w_{k-1}}{k}

    A name first seen at update :math:`k > 1` (a layer unfrozen later, constant until then)
    starts from its current value. :meth:`swap` exchanges the averages with the live tensors
    in place; calling it again restores both bit for bit.
    """

    def __init__(self):
        self.avg: dict[str, torch.Tensor] = {}
        self.n = 0
        self._backup: dict[str, torch.Tensor] = {}
        self.swapped = False

    @torch.no_grad()
    def update(self, named: dict[str, torch.Tensor]):
        self.n += 1
        for name, p in named.items():
            if name not in self.avg:
                self.avg[name] = p.detach().float().clone()
            else:
                self.avg[name].lerp_(p.detach().float(), 1.0 / self.n)

    @torch.no_grad()
    def swap(self, named: dict[str, nn.Parameter]):
        """Averages into ``named``'s tensors and theirs aside (or back again). Zero-copy where the
        dtypes and devices agree; otherwise the live values are copied aside."""
        for name, p in named.items():
            if name not in self.avg:
                continue
            a = self.avg[name]
            if a.dtype == p.dtype and a.device == p.device:
                p.data, self.avg[name] = a, p.data
            elif not self.swapped:
                self._backup[name] = p.detach().clone()
                p.copy_(a)
            else:
                p.copy_(self._backup.pop(name))
        self.swapped = not self.swapped

    @torch.no_grad()
    def copy_to(self, named: dict[str, nn.Parameter]):
        """Overwrite ``named``'s tensors with the averages (which stay)."""
        if self.swapped:
            raise RuntimeError("swap the averages out first")
        for name, p in named.items():
            if name in self.avg:
                p.copy_(self.avg[name])

    def state_dict(self) -> dict:
        if self.swapped:
            raise RuntimeError("swap the averages out before saving them")
        return {"avg": {k: v.clone() for k, v in self.avg.items()}, "n": self.n}

    def load_state_dict(self, state: dict, device=None):
        self.avg = {k: v.to(device) if device is not None else v.clone() for k, v in state["avg"].items()}
        self.n, self._backup, self.swapped = int(state["n"]), {}, False


BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


@torch.no_grad()
def update_bn(model: nn.Module, batches: Iterable, max_batches: int | None = None) -> dict[str, torch.Tensor] | None:
    """Recompute the BatchNorm running statistics of ``model`` over ``batches`` (``(x, ...)`` tuples),
    as ``torch.optim.swa_utils.update_bn``: a cumulative mean over the pass (momentum ``None``), in
    train mode. Single-row batches are skipped (BatchNorm cannot take their statistics).

    Returns the statistics it replaced (``None`` when the model has no BatchNorm), for restoring.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return None
    old = {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith(BN_STATS)}
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    dev = next(model.parameters()).device
    for i, (xb, *_) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        if xb.shape[0] > 1:
            model(xb.to(dev))
    for m, mo in zip(bns, momenta):
        m.momentum = mo
    model.train(was_training)
    return old


def nt_asgd_trigger(losses: Sequence[float], nonmono: int = 5) -> bool:
    r"""NT-ASGD's non-monotone criterion (Merity et al. 2017, Algorithm 1) at the latest check.

    With validation losses :math:`v_0 \dots v_t` and :math:`n` = ``nonmono``, averaging starts
    at check :math:`t` when :math:`t > n` and :math:`v_t > \min_{i < t - n} v_i`.

    >>> nt_asgd_trigger([3, 2, 3.5], nonmono=1), nt_asgd_trigger([3, 2, 2.5], nonmono=1)
    (True, False)
    """
    t = len(losses) - 1
    return t > nonmono and losses[t] > min(losses[: t - nonmono])


class ASGDWeightAveraging(ResumableCallback):
    r"""Averaged SGD: from iteration :math:`T` on, the model's weights are the mean of the iterates

    .. math:: \bar w = \frac{1}{K - T + 1} \sum_{i=T}^{K} w_i

    where :math:`w_i` are the weights after optimizer step :math:`i`. ``start`` (an iteration) or
    ``start_epoch`` fixes :math:`T`; with neither, :func:`nt_asgd_trigger` picks it from the
    validation losses (``nonmono`` checks, default 5).

    - Works with any optimizer: training continues on the raw weights; the average
      (:class:`WeightAverager`, fp32) is a side copy of the optimizer's parameters.
    - Validation runs on the averaged weights, swapped in at ``before_validate`` and out at
      ``after_validate``, bit-exact. fastai has no event for an exception, so if validation is
      interrupted the averages stay in until :meth:`swap_out` or the next ``fit``, which puts the
      raw weights back first.
    - At the end of ``fit`` the model holds the averaged weights, unless ``keep_raw=True``
      (then :meth:`swap_in` / :meth:`averaged_state_dict` give them).
    - BatchNorm statistics of the averaged weights are recomputed on the training data
      (:func:`update_bn`; ``bn_batches`` caps the pass) and restored on swap-out.
    """
    order = 55  # after Recorder (50), before schedulers (60): swaps happen around validation only

    def __init__(self, start: int | None = None, start_epoch: int | None = None, nonmono: int = 5,
                 keep_raw: bool = False, bn_batches: int | None = None):
        if start is not None and start_epoch is not None:
            raise ValueError("give `start` (iteration) or `start_epoch`, not both")
        if start is not None and start < 0 or start_epoch is not None and start_epoch < 0:
            raise ValueError("start and start_epoch must be >= 0")
        if nonmono < 1:
            raise ValueError(f"nonmono must be >= 1, got {nonmono}")
        self.start, self.start_epoch, self.nonmono = start, start_epoch, nonmono
        self.keep_raw, self.bn_batches = keep_raw, bn_batches
        self.n_steps, self.start_iter = 0, None
        self.val_history: list[float] = []
        self.averager = WeightAverager()
        self._bn_backup = None
        self._in_fit = False

    # ------------------------------------------------------------------------------ state
    @property
    def n_averaged(self) -> int:
        return self.averager.n

    @property
    def avg(self) -> dict[str, torch.Tensor]:
        return self.averager.avg

    @property
    def triggered(self) -> bool:
        return self.start_iter is not None and self.n_steps >= self.start_iter

    def state_dict(self) -> dict:
        return dict(n_steps=self.n_steps, start_iter=self.start_iter, val_history=list(self.val_history),
                    avg=self.averager.state_dict()["avg"], n_averaged=self.averager.n)

    def load_state_dict(self, state: dict):
        missing = {"n_steps", "start_iter", "val_history", "avg", "n_averaged"} - set(state)
        if missing:
            raise KeyError(f"{type(self).__name__} state lacks {sorted(missing)}")
        self.n_steps, self.start_iter, self.val_history = state["n_steps"], state["start_iter"], list(state["val_history"])
        self.averager.load_state_dict({"avg": state["avg"], "n": state["n_averaged"]})
        self._resumed = True

    def _named_params(self) -> dict[str, nn.Parameter]:
        in_opt = {id(p) for pg in self.opt.param_lists for p in pg}
        return {n: p for n, p in self._model.named_parameters() if id(p) in in_opt}

    # ----------------------------------------------------------------------------- events
    def before_fit(self):
        if self.averager.swapped:  # a previous fit was interrupted during validation
            self.swap_out()
        self._model = self.learn.model  # kept so swap_in / averaged_state_dict work after fit(cbs=...)
        self._params = self._named_params()
        if self._resumed:
            self._resumed = False
            unknown = set(self.avg) - set(self._params)
            if unknown:
                raise KeyError(f"averaged state has parameters this model lacks: {sorted(unknown)[:5]}")
            dev = next(iter(self._params.values())).device
            self.averager.load_state_dict({"avg": self.avg, "n": self.averager.n}, device=dev)
        else:
            self.n_steps, self.val_history, self.averager = 0, [], WeightAverager()
            self.start_iter = self.start if self.start is not None else (
                self.start_epoch * len(self.dls.train) if self.start_epoch is not None else None)
        self._in_fit = True

    def after_step(self):
        if self.triggered:
            self.averager.update(self._params)
        self.n_steps += 1

    def before_validate(self):
        self._vsum, self._vn = 0.0, 0
        if self._in_fit and self.n_averaged:
            self.swap_in()

    def after_batch(self):
        if not self.training and self._in_fit and self.learn.yb and self.learn.loss is not None:
            bs = self.learn.yb[0].shape[0]
            self._vsum += float(self.learn.loss) * bs
            self._vn += bs

    def after_validate(self):
        self.swap_out()
        if not self._in_fit or not self._vn:
            return
        self.val_history.append(self._vsum / self._vn)
        if self.start_iter is None and nt_asgd_trigger(self.val_history, self.nonmono):
            self.start_iter = self.n_steps  # average from the next step on

    def after_fit(self):
        self._in_fit = False
        if self.n_averaged and not self.keep_raw:
            self.averager.copy_to(self._params)
            self._update_bn()  # the averaged weights and their statistics stay

    # ------------------------------------------------------------------------------ swaps
    def swap_in(self):
        """Put the averaged weights (and their BatchNorm statistics) into the model. No-op if nothing
        is averaged or they are in already."""
        if self.averager.swapped or not self.n_averaged:
            return
        if not hasattr(self, "_params"):
            raise RuntimeError("nothing averaged yet: fit with this callback first")
        self.averager.swap(self._params)
        self._bn_backup = self._update_bn()

    def swap_out(self):
        """Put the raw training weights (and statistics) back, bit-exact. No-op if they are in place."""
        if not self.averager.swapped:
            return
        self.averager.swap(self._params)
        if self._bn_backup is not None:
            self._model.load_state_dict(self._bn_backup, strict=False)
            self._bn_backup = None

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged weights in place of the trained ones."""
        sd = {k: v.detach().clone() for k, v in self._model.state_dict().items()}
        if self.averager.swapped:
            return sd
        by_id = {id(p): n for n, p in self._params.items()}
        for k, p in self._model.named_parameters(remove_duplicate=False):
            n = by_id.get(id(p))
            if n in self.avg:
                sd[k] = self.avg[n].to(p.dtype).clone()
        return sd

    def _update_bn(self):
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self._model.modules())
        if not has_bn:
            return None
        if self.learn is None:
            raise RuntimeError("the model has BatchNorm layers: swap the averaged weights in while the callback is "
                               "attached to a learner (learn.add_cb), so their statistics can be recomputed")
        train = self.dls.train
        train = getattr(train, "dl", train)  # under learn.distrib_ctx(): fastai's DistributedDL around ours; every rank reads all
        return update_bn(self._model, train.new(shuffle=False), self.bn_batches)  # the loader's RNG untouched

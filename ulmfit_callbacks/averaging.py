"""ASGD / NT-ASGD weight averaging (Merity et al. 2017, Sec. 3 and Algorithm 1) as a callback."""
from __future__ import annotations

import torch
from torch import nn

from .base import ResumableCallback

__all__ = ["ASGDWeightAveraging"]


class ASGDWeightAveraging(ResumableCallback):
    r"""Averaged SGD: from iteration :math:`T` on, the model's weights are the mean of the iterates

    .. math:: \bar w = \frac{1}{K - T + 1} \sum_{i=T}^{K} w_i

    where :math:`w_i` are the weights after optimizer step :math:`i`. ``start`` (an iteration) or
    ``start_epoch`` fixes :math:`T`; with neither, the non-monotonic trigger of NT-ASGD picks it:
    at each validation check :math:`t`, averaging starts when :math:`t > n` and the validation
    loss is worse than :math:`\min` of the checks older than ``nonmono`` (:math:`n`, default 5).

    - Works with any optimizer: training continues on the raw weights; the average is a side copy.
    - Validation runs on the averaged weights (swapped in, then back, bit-exact); an exception at
      any point, validation included, leaves the raw training weights in the model.
    - At the end of ``fit`` the model holds the averaged weights, unless ``keep_raw=True``
      (then :meth:`swap_in` / :meth:`averaged_state_dict` give them).
    - Averages are fp32 whatever the training precision; the cost is one extra copy of the
      optimizer's (trainable) parameters.
    - BatchNorm: running statistics of the averaged weights are recomputed on the training data
      (as ``torch.optim.swa_utils.update_bn``; ``bn_batches`` caps the pass) and restored on swap-out.

    Why not ``torch.optim.swa_utils.AveragedModel``: it deep-copies the whole module, frozen
    parameters and buffers included, and keeps a second module around. Swapping averaged
    tensors in by parameter name is cheaper, keeps one model object for fastai, and gives a
    ``state_dict`` keyed by parameter names.
    """
    order = 55  # after Recorder (50), before schedulers (60): swaps happen around validation only
    _state_attrs = ("n_steps", "start_iter", "n_averaged", "val_history", "avg")

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
        self.n_steps, self.start_iter, self.n_averaged = 0, None, 0
        self.val_history: list[float] = []
        self.avg: dict[str, torch.Tensor] = {}
        self._backup: dict[str, torch.Tensor] = {}
        self._bn_backup: dict[str, torch.Tensor] | None = None
        self._swapped = False
        self._in_fit = False

    # ------------------------------------------------------------------------------ bookkeeping
    @property
    def triggered(self) -> bool:
        return self.start_iter is not None and self.n_steps >= self.start_iter

    def _named_params(self) -> dict[str, nn.Parameter]:
        in_opt = {id(p) for pg in self.opt.param_lists for p in pg}
        return {n: p for n, p in self._model.named_parameters() if id(p) in in_opt}

    def before_fit(self):
        self._model = self.learn.model  # kept so swap_in / averaged_state_dict work after fit(cbs=...)
        self._params = self._named_params()
        if self._resumed:
            self._resumed = False
            unknown = set(self.avg) - set(self._params)
            if unknown:
                raise KeyError(f"averaged state has parameters this model lacks: {sorted(unknown)[:5]}")
            dev = next(iter(self._params.values())).device
            self.avg = {k: v.to(dev) for k, v in self.avg.items()}
        else:
            self.n_steps, self.n_averaged, self.val_history, self.avg = 0, 0, [], {}
            self.start_iter = self.start if self.start is not None else (
                self.start_epoch * len(self.dls.train) if self.start_epoch is not None else None)
        self._in_fit = True
        self._guard_validation()

    def _guard_validation(self):
        """Wrap the learner's validation so that any exception swaps the raw weights back."""
        learn, orig = self.learn, self.learn._do_epoch_validate

        def _do_epoch_validate(*args, **kwargs):
            try:
                return orig(*args, **kwargs)
            except BaseException:
                self.swap_out()
                learn.__dict__.pop("_do_epoch_validate", None)
                raise
        learn._do_epoch_validate = _do_epoch_validate

    @torch.no_grad()
    def after_step(self):
        if self.start_iter is not None and self.n_steps >= self.start_iter:
            self.n_averaged += 1
            w = 1.0 / self.n_averaged
            for name, p in self._params.items():
                if name not in self.avg:  # first iterate (or a parameter unfrozen later: it was constant)
                    self.avg[name] = p.detach().float().clone()
                else:
                    self.avg[name].lerp_(p.detach().float(), w)
        self.n_steps += 1

    # ------------------------------------------------------------------------------- NT trigger
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
        v = self._vsum / self._vn
        if self.start_iter is None and len(self.val_history) > self.nonmono \
                and v > min(self.val_history[: -self.nonmono]):
            self.start_iter = self.n_steps  # average from the next step on
        self.val_history.append(v)

    def after_fit(self):
        self._in_fit = False
        self.learn.__dict__.pop("_do_epoch_validate", None)
        if self.n_averaged and not self.keep_raw:
            with torch.no_grad():
                for name, p in self._params.items():
                    if name in self.avg:
                        p.copy_(self.avg[name])
            self._update_bn()
            self._bn_backup = None  # the averaged weights and their statistics stay

    # ------------------------------------------------------------------------------------ swaps
    @torch.no_grad()
    def swap_in(self):
        """Put the averaged weights into the model (raw ones kept aside). No-op if nothing averaged."""
        if self._swapped or not self.n_averaged:
            return
        if not hasattr(self, "_params"):
            raise RuntimeError("nothing averaged yet: fit with this callback first")
        for name, p in self._params.items():
            if name not in self.avg:
                continue
            a = self.avg[name]
            if a.dtype == p.dtype and a.device == p.device:
                p.data, self.avg[name] = a, p.data  # zero-copy exchange
            else:
                self._backup[name] = p.detach().clone()
                p.copy_(a)
        self._swapped = True
        self._update_bn()

    @torch.no_grad()
    def swap_out(self):
        """Put the raw training weights back (bit-exact). No-op if they are in place."""
        if not self._swapped:
            return
        for name, p in self._params.items():
            if name in self._backup:
                p.copy_(self._backup.pop(name))
            elif name in self.avg:
                p.data, self.avg[name] = self.avg[name], p.data
        if self._bn_backup is not None:
            for k, v in self._model.state_dict().items():
                if k in self._bn_backup:
                    v.copy_(self._bn_backup[k])
            self._bn_backup = None
        self._swapped = False

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged weights in place of the trained ones."""
        sd = {k: v.detach().clone() for k, v in self._model.state_dict().items()}
        raw = {n: p for n, p in self._model.named_parameters(remove_duplicate=False)}
        by_id = {id(p): n for n, p in self._params.items()}
        for k, p in raw.items():
            n = by_id.get(id(p))
            if n in self.avg and not self._swapped:
                sd[k] = self.avg[n].to(p.dtype).clone()
        return sd

    @torch.no_grad()
    def _update_bn(self):
        model = self._model
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        if self.learn is None:
            raise RuntimeError("the model has BatchNorm layers: swap the averaged weights in while the callback is "
                               "attached to a learner (learn.add_cb), so their statistics can be recomputed")
        self._bn_backup = {k: v.detach().clone() for k, v in model.state_dict().items()
                           if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
        was_training = model.training
        model.train()
        dl = self.dls.train.new(shuffle=False)  # leaves the training loader's RNG alone
        dev = next(model.parameters()).device
        for i, (xb, *_) in enumerate(dl):
            if self.bn_batches is not None and i >= self.bn_batches:
                break
            if xb.shape[0] > 1:  # BatchNorm cannot take training statistics of a single row
                model(xb.to(dev))
        for m, mo in zip(bns, momenta):
            m.momentum = mo
        model.train(was_training)

"""Slanted triangular learning rates and discriminative learning rates (ULMFiT Sec. 3.2)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from fastai.callback.schedule import ParamScheduler

from .base import ResumableCallback
from .splitters import discriminative_lrs

__all__ = ["stlr", "SlantedTriangularLR", "DiscriminativeLR", "plot_lrs"]


def stlr(t: int, T: int, lr_max: float = 0.01, cut_frac: float = 0.1, ratio: float = 32) -> float:
    r"""The slanted triangular learning rate at iteration ``t`` of ``T`` (Howard & Ruder 2018, Eq. 3).

    .. math::
        cut = \lfloor T \cdot cut\_frac \rfloor, \qquad
        p = \begin{cases} t / cut & t < cut \\
                          1 - \frac{t - cut}{cut \cdot (1/cut\_frac - 1)} & \text{otherwise} \end{cases}, \qquad
        \eta_t = \eta_{max} \frac{1 + p (ratio - 1)}{ratio}

    Two guards the paper does not need at its scale: ``cut`` is at least 1 (short fits), and
    ``p`` is clipped at 0, because when ``T`` is not a multiple of ``1/cut_frac`` the last
    iterations would otherwise get p < 0 and even a negative lr.
    """
    cut = max(1, math.floor(T * cut_frac))
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return lr_max * (1 + max(p, 0.0) * (ratio - 1)) / ratio


def _check_hypers(lr_max, cut_frac, ratio):
    lrs = np.atleast_1d(np.asarray(lr_max, dtype=np.float64))
    if (lrs <= 0).any() or not np.isfinite(lrs).all():
        raise ValueError(f"lr_max must be > 0, got {lr_max}")
    if not 0 < cut_frac < 1:
        raise ValueError(f"cut_frac must be in (0, 1), got {cut_frac}")
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")


class SlantedTriangularLR(ResumableCallback):
    """Slanted triangular learning rates per iteration over the whole ``fit``, ``T`` = epochs x batches.

    ``lr_max`` is one value or one per parameter group. When the training loader draws variable
    BPTT lengths (``dl.variable_bptt``), every group's lr is rescaled by ``seq_len / bptt`` for
    that batch (awd-lstm-lm rescales group 0 only). The lr of every group at every iteration is
    kept in ``self.lrs``; :meth:`plot` draws them (the paper's Figure 2).

    Order: after ``Recorder`` (50), same as ``ParamScheduler`` (60); :class:`DiscriminativeLR`
    runs after it. Resumable: the position ``t`` and total ``T`` are the state.
    """
    order = ParamScheduler.order
    _state_attrs = ("t", "T", "lrs")

    def __init__(self, lr_max: float | Sequence[float] = 0.01, cut_frac: float = 0.1, ratio: float = 32):
        _check_hypers(lr_max, cut_frac, ratio)
        self.lr_max, self.cut_frac, self.ratio = lr_max, cut_frac, ratio
        self.t, self.T, self.lrs = 0, 0, []

    def lr_at(self, t: int) -> np.ndarray:
        """Scheduled lr of every group at iteration ``t`` (before any BPTT rescaling)."""
        return np.asarray(self.lr_max, dtype=np.float64) * stlr(t, self.T, 1.0, self.cut_frac, self.ratio)

    def before_fit(self):
        T = self.n_epoch * len(self.dls.train)
        n = len(self.opt.param_lists)
        if np.ndim(self.lr_max) and len(self.lr_max) != n:
            raise ValueError(f"lr_max has {len(self.lr_max)} values but the optimizer has {n} parameter groups")
        if self._resumed:
            if T != self.T:
                raise ValueError(f"resumed schedule has T={self.T} iterations but this fit has {T}: "
                                 "call fit with the same number of epochs and the same data")
            self._resumed = False
        else:
            self.t, self.T, self.lrs = 0, T, []

    def before_batch(self):
        if not self.training:
            return
        lr = self.lr_at(self.t)
        dl = self.learn.dl
        if getattr(dl, "variable_bptt", False):
            lr = lr * (self.learn.xb[0].shape[1] / dl.bptt)
        self.opt.set_hyper("lr", lr if lr.ndim else float(lr))

    def after_batch(self):
        if not self.training:
            return
        self.lrs.append([float(h["lr"]) for h in self.opt.hypers])
        self.t += 1

    def plot(self, ax=None):
        """The recorded lr of every parameter group per iteration; returns the matplotlib figure."""
        return plot_lrs(self.lrs, ax=ax, title="Slanted triangular learning rates")


class DiscriminativeLR(ResumableCallback):
    """Discriminative fine-tuning: group ``l-1`` gets the lr of group ``l`` divided by ``decay``.

    .. math:: \\eta^{l-1} = \\eta^{l} / 2.6

    Counting down from the top (last) group, whose lr is whatever the schedule set this batch
    (:class:`SlantedTriangularLR`, fastai's ``fit_one_cycle``, or the constant lr of ``fit``).
    The ratios are re-derived from the top group every batch, so nothing compounds.
    """
    order = SlantedTriangularLR.order + 1
    _state_attrs = ()

    def __init__(self, decay: float = 2.6):
        if decay <= 0:
            raise ValueError(f"decay must be > 0, got {decay}")
        self.decay = decay

    def _apply(self):
        top = float(self.opt.hypers[-1]["lr"])
        self.opt.set_hyper("lr", discriminative_lrs(top, len(self.opt.hypers), self.decay))

    def before_fit(self):
        self._apply()

    def before_batch(self):
        if self.training:
            self._apply()


def plot_lrs(lrs: Sequence[Sequence[float]], ax=None, title: str | None = None):
    """Plot one line per parameter group from a per-iteration list of per-group lrs."""
    import matplotlib
    if ax is None:
        matplotlib.use(matplotlib.get_backend())
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    arr = np.asarray(lrs, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no learning rates recorded yet: fit first")
    for g in range(arr.shape[1]):
        ax.plot(arr[:, g], label=f"group {g}" + (" (top)" if g == arr.shape[1] - 1 else ""))
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig

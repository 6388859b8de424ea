"""Activation regularisation (AR) and temporal activation regularisation (TAR), Merity et al. 2017."""
from __future__ import annotations

from fastai.callback.core import Callback

__all__ = ["ActivationRegularizer"]


class ActivationRegularizer(Callback):
    r"""Adds AR and TAR to the training loss of an LM that returns ``(logits, raw_out, dropped_out)``:

    .. math:: L = L_{CE} + \alpha \, \overline{(m \odot h_t)^2} + \beta \, \overline{(h_t - h_{t-1})^2}

    on the last layer's dropped (AR) and raw (TAR) outputs, computed in fp32. TAR is skipped for
    1-token batches, where it is undefined (fastai's ``RNNRegularizer`` gives NaN there). Works
    with our LM and fastai's ``get_language_model`` models; replaces fastai's ``RNNCallback``.
    """
    order = -1  # after_pred must unpack the tuple before metrics and other callbacks see it

    def __init__(self, alpha: float = 2.0, beta: float = 1.0):
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {alpha}, {beta}")
        self.alpha, self.beta = alpha, beta
        self.raw_out = self.out = None

    def after_pred(self):
        if isinstance(self.pred, tuple):
            self.learn.pred, self.raw_out, self.out = self.pred[0], self.pred[1], self.pred[2]

    def after_loss(self):
        if not self.training or self.out is None:
            return
        reg = self.alpha * self.out.float().pow(2).mean() if self.alpha else 0.0
        h = self.raw_out
        if self.beta and h.size(1) > 1:
            reg = reg + self.beta * (h[:, 1:] - h[:, :-1]).float().pow(2).mean()
        self.learn.loss_grad = self.learn.loss_grad + reg

    def after_batch(self):
        self.raw_out = self.out = None  # drop graph references between batches

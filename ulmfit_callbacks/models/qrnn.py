"""Quasi-recurrent layer (Bradbury et al. 2016, "Quasi-Recurrent Neural Networks"), pure PyTorch.

A QRNN layer replaces the LSTM's hidden-to-hidden matrix products by one input GEMM for the
whole sequence and an element-wise recurrence ("fo-pooling"):

    Z = tanh(W_z * X),  F = sigmoid(W_f * X),  O = sigmoid(W_o * X)     (* = convolution of width k)
    c_t = f_t ⊙ c_{t-1} + (1 - f_t) ⊙ z_t
    h_t = o_t ⊙ c_t

The recurrence ``c_t = a_t c_{t-1} + b_t`` is an associative scan, computed here for all t at
once in ceil(log2 T) vectorised steps (Hillis & Steele); it only multiplies forget gates in
(0, 1), so it is as stable as the sequential loop. MultiFiT (Eisenschlos et al. 2019) uses
4 QRNN layers of 1,550 units; as in fastai and awd-lstm-lm, the first layer has width 2, the
others width 1, and ``weight_p`` is DropConnect on the gate matrix.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["forget_mult", "QRNNLayer"]


def forget_mult(f: Tensor, x: Tensor, c0: Tensor | None = None) -> Tensor:
    """All ``c_t = f_t ⊙ c_{t-1} + x_t`` for ``f``, ``x`` of shape (batch, T, hidden), ``c_{-1} = c0``.

    Inclusive scan of the affine maps ``c -> f_t c + x_t``: after the step with offset ``d``,
    position t holds the composition of the maps t-2d+1..t. Differentiable by autograd.
    """
    if c0 is not None:
        x = torch.cat([x[:, :1] + f[:, :1] * c0.unsqueeze(1), x[:, 1:]], 1)
    T, d = x.size(1), 1
    while d < T:
        x = torch.cat([x[:, :d], torch.addcmul(x[:, d:], f[:, d:], x[:, :-d])], 1)
        f = torch.cat([f[:, :d], f[:, d:] * f[:, :-d]], 1)
        d *= 2
    return x


class QRNNLayer(nn.Module):
    """One QRNN layer with fo-pooling, a gate convolution of width ``window`` (1 or 2) and
    DropConnect (``weight_p``) on the gate matrix. The state is ``(c, x_last)``: the last cell
    state and, for ``window=2``, the last input, each ``(1, batch, size)``.
    """

    def __init__(self, n_in: int, n_out: int, weight_p: float = 0.0, window: int = 1):
        super().__init__()
        if window not in (1, 2):
            raise ValueError(f"QRNN window must be 1 or 2, got {window}")
        self.n_in, self.n_out, self.weight_p, self.window = n_in, n_out, weight_p, window
        self.weight = nn.Parameter(torch.empty(3 * n_out, window * n_in))
        self.bias = nn.Parameter(torch.zeros(3 * n_out))
        bound = 1 / math.sqrt(window * n_in)
        nn.init.uniform_(self.weight, -bound, bound)

    @property
    def state_sizes(self) -> tuple[int, int]:
        return self.n_out, self.n_in

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        c0, x_prev = state[0][0], state[1][0]
        if self.window == 2:
            shifted = torch.cat([x_prev.unsqueeze(1).to(x.dtype), x[:, :-1]], 1)
            inp = torch.cat([shifted, x], 2)
        else:
            inp = x
        w = F.dropout(self.weight, self.weight_p, self.training) if self.weight_p else self.weight
        z, f, o = F.linear(inp, w, self.bias).float().chunk(3, dim=2)  # the recurrence runs in fp32
        f = torch.sigmoid(f)
        c = forget_mult(f, (1 - f) * torch.tanh(z), c0.float())
        h = torch.sigmoid(o) * c
        return h, (c[:, -1].unsqueeze(0), x[:, -1].unsqueeze(0))

    def extra_repr(self) -> str:
        return f"{self.n_in}, {self.n_out}, window={self.window}, weight_p={self.weight_p}"

"""Fused decoder + cross-entropy for the LM: the (tokens x vocab) logits are never stored.

For an LM with a 30k vocabulary most of a CPU training step is not the decoder GEMM but the
memory traffic around it: the logits (bs * bptt * vocab floats, 270 MB for bs 32, bptt 70,
vocab 30k) are written, cast, read by log-softmax, written again by its backward and cast
back. :func:`linear_cross_entropy` computes the same loss chunk by chunk,

    loss = mean_i [ logsumexp_v (h_i W^T + b)_v - (h_i W^T + b)_{y_i} ]

and its gradient ``dL/dlogits = softmax - onehot(y)`` chunk by chunk again in the backward
pass (one extra GEMM), so each chunk's logits stay in cache. Logits are accumulated in fp32
whatever the dtype of ``h`` (bf16 under autocast).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["linear_cross_entropy", "DecoderInput", "LMLoss"]


def _logits(h: Tensor, wt: Tensor, b: Tensor | None) -> Tensor:
    lg = torch.mm(h, wt).float()  # wt: (d, V) contiguous (a transposed operand is slower in oneDNN's bf16 GEMM)
    return lg.add_(b) if b is not None else lg


def _lse_(lg: Tensor) -> Tensor:
    """Row-wise logsumexp; overwrites ``lg`` (fewer passes than ``torch.logsumexp``)."""
    m = lg.amax(1, keepdim=True)
    return lg.sub_(m).exp_().sum(1).log_().add_(m.squeeze(1))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, target, chunk):
        wt = weight.to(h.dtype).t().contiguous()
        b = bias.float() if bias is not None else None
        n = h.size(0)
        lse = torch.empty(n, dtype=torch.float32, device=h.device)
        picked = torch.empty(n, dtype=torch.float32, device=h.device)
        for i in range(0, n, chunk):
            lg = _logits(h[i:i + chunk], wt, b)
            picked[i:i + chunk] = lg.gather(1, target[i:i + chunk, None]).squeeze(1)
            lse[i:i + chunk] = _lse_(lg)
        ctx.save_for_backward(h, weight, bias, target, lse)
        ctx.chunk = chunk
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad):
        h, weight, bias, target, lse = ctx.saved_tensors
        w = weight.to(h.dtype)
        wt = w.t().contiguous()
        b = bias.float() if bias is not None else None
        n, chunk = h.size(0), ctx.chunk
        scale = grad.float() / n
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=h.device) \
            if bias is not None and ctx.needs_input_grad[2] else None
        for i in range(0, n, chunk):
            hc = h[i:i + chunk]
            p = _logits(hc, wt, b).sub_(lse[i:i + chunk, None]).exp_()  # softmax
            p[torch.arange(p.size(0), device=p.device), target[i:i + chunk]] -= 1
            p.mul_(scale)
            if grad_b is not None:
                grad_b += p.sum(0)
            pd = p.to(h.dtype)
            if grad_h is not None:
                torch.mm(pd, w, out=grad_h[i:i + chunk])
            if grad_w is not None:
                grad_w += torch.mm(pd.t(), hc).float()
        return (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None)


def linear_cross_entropy(h: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, chunk: int = 128) -> Tensor:
    """``F.cross_entropy(F.linear(h, weight, bias), target)`` (mean) without storing the logits.

    ``h``: (N, d) in fp32 or bf16; ``weight``: (V, d); ``target``: (N,) class ids. The GEMMs run
    in ``h``'s dtype, the softmax in fp32. Gradients flow to ``h``, ``weight`` and ``bias``.
    """
    if h.dim() != 2 or target.shape != h.shape[:1]:
        raise ValueError(f"expected h (N, d) and target (N,), got {tuple(h.shape)} and {tuple(target.shape)}")
    return _LinearCrossEntropy.apply(h, weight, bias, target, chunk)


class DecoderInput:
    """What a fused :class:`~ulmfit_callbacks.models.awd_lstm.LinearDecoder` returns in training
    instead of logits: the decoder's input and parameters, for :class:`LMLoss`."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None):
        self.hidden, self.weight, self.bias = hidden, weight, bias

    @property
    def shape(self):  # (bs, seq_len, vocab), as the logits would be
        return (*self.hidden.shape[:-1], self.weight.size(0))

    def logits(self) -> Tensor:
        return F.linear(self.hidden.float(), self.weight, self.bias)


class LMLoss:
    """Flat cross-entropy of an LM: fused (:func:`linear_cross_entropy`) when the model gives a
    :class:`DecoderInput`, fastai's ``CrossEntropyLossFlat`` when it gives logits."""

    def __init__(self, chunk: int = 128):
        from fastai.losses import CrossEntropyLossFlat
        self.chunk, self.flat = chunk, CrossEntropyLossFlat()

    def __call__(self, pred, target: Tensor) -> Tensor:
        if isinstance(pred, DecoderInput):
            h = pred.hidden.reshape(-1, pred.hidden.size(-1))
            return linear_cross_entropy(h, pred.weight, pred.bias, target.reshape(-1), self.chunk)
        return self.flat(pred, target)

    def activation(self, x):
        return self.flat.activation(x)

    def decodes(self, x):
        return self.flat.decodes(x)

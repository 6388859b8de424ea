"""Fused decoder + cross-entropy for the LM: the fp32 (tokens x vocab) logits are never stored.

For an LM with a 30k vocabulary most of a CPU training step is not the decoder GEMM but the
memory traffic around it: the logits (bs * bptt * vocab floats, 270 MB for bs 32, bptt 70,
vocab 30k) are written, cast, read by log-softmax, written again by its backward and cast
back. :func:`linear_cross_entropy` computes the same loss chunk by chunk,

    loss = mean_i [ logsumexp_v (h_i W^T + b)_v - (h_i W^T + b)_{y_i} ]

and, when a gradient will be needed, its gradient in the same pass: with
``P = softmax(h W^T + b) - onehot(y)``, ``dL/dh = P W / N``, ``dL/dW = P^T h / N`` and
``dL/db = sum_i P_i / N``. ``P`` is built ``chunk`` rows at a time (each chunk's logits stay in
cache), kept in ``h``'s dtype for up to ``block`` rows (all of a bs 32 x bptt 70 batch: 134 MB
in bf16 for a 30k vocabulary, freed when the call returns) and multiplied out in two large
GEMMs; many small blocks would each read and write the whole V x d gradient of W.
So the decoder costs the three GEMMs of the plain path, and the backward pass only scales
the stored gradients by the incoming one. Logits and softmax are fp32 whatever the dtype of
``h`` (bf16 or fp16 under autocast); with fp16 and a loss scale (fastai's ``MixedPrecision``)
the incoming gradient is the scale, so the stored gradients come out scaled as usual.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["linear_cross_entropy", "DecoderInput", "FusedLinear", "LMLoss"]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, target, chunk, block, want_grad):
        n, dt = h.size(0), h.dtype
        w = weight.to(dt)
        wt = w.t().contiguous()  # (d, V): a transposed operand is slower in oneDNN's bf16 GEMM
        b = bias.float() if bias is not None else None
        need_h, need_w, need_b = (want_grad and x for x in ctx.needs_input_grad[:3])
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=h.device) if need_b else None
        p_block = torch.empty(min(block, n), weight.size(0), dtype=dt, device=h.device) if want_grad else None
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for j in range(0, n, block):
            rows = min(block, n - j)
            for i in range(j, j + rows, chunk):
                e = min(i + chunk, j + rows)
                hc, y = h[i:e], target[i:e]
                lg = torch.mm(hc, wt).float()
                if b is not None:
                    lg.add_(b)
                m = lg.amax(1, keepdim=True)
                picked = lg.gather(1, y[:, None]).squeeze(1)
                s = lg.sub_(m).exp_().sum(1)  # lg now holds exp(logit - max)
                total += (s.log() + m.squeeze(1) - picked).sum()
                if want_grad:
                    p = lg.div_(s[:, None])  # softmax
                    p[torch.arange(p.size(0), device=p.device), y] -= 1
                    if grad_b is not None:
                        grad_b += p.sum(0)
                    p_block[i - j:e - j] = p
            pb, hb = p_block[:rows] if want_grad else None, h[j:j + rows]
            if grad_h is not None:
                torch.mm(pb, w, out=grad_h[j:j + rows])
            if grad_w is not None:
                if dt == torch.float32:
                    grad_w.addmm_(pb.t(), hb)
                else:
                    grad_w += torch.mm(pb.t(), hb).float()
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.n, ctx.dtypes = n, (weight.dtype, bias.dtype if bias is not None else None)
        return (total / n).float()

    @staticmethod
    def backward(ctx, grad):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad.float() / ctx.n
        return (grad_h * scale.to(grad_h.dtype) if grad_h is not None else None,
                (grad_w * scale).to(ctx.dtypes[0]) if grad_w is not None else None,
                (grad_b * scale).to(ctx.dtypes[1]) if grad_b is not None else None, None, None, None, None)


def linear_cross_entropy(h: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, chunk: int = 128,
                         block: int = 4096) -> Tensor:
    """``F.cross_entropy(F.linear(h, weight, bias), target)`` (mean) without storing the logits.

    ``h``: (N, d) in fp32, bf16 or fp16; ``weight``: (V, d); ``target``: (N,) class ids. The GEMMs
    run in ``h``'s dtype (also inside an autocast region), the logits' max, exponentials and sums
    in fp32. Gradients flow to ``h``, ``weight`` and ``bias``; they are computed in the forward
    pass (only when autograd will want them), so a call under ``torch.no_grad()`` costs one GEMM.
    ``chunk``: rows of logits at a time; ``block``: rows of the softmax kept (in ``h``'s dtype)
    for each gradient GEMM.
    """
    if h.dim() != 2 or target.shape != h.shape[:1]:
        raise ValueError(f"expected h (N, d) and target (N,), got {tuple(h.shape)} and {tuple(target.shape)}")
    if chunk < 1 or block < 1:
        raise ValueError(f"chunk and block must be >= 1, got {chunk} and {block}")
    want_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, weight, bias))
    with torch.autocast(h.device.type, enabled=False):  # fastai's MixedPrecision computes the loss under autocast
        return _LinearCrossEntropy.apply(h, weight, bias, target, chunk, max(block, chunk), want_grad)


class DecoderInput:
    """What a :class:`FusedLinear` decoder returns in training instead of logits: the decoder's
    input and parameters, for :class:`LMLoss`.

    fastai's ``MixedPrecision`` passes predictions through ``to_float`` (``x.float() if
    torch.is_floating_point(x)``) so the loss is computed in fp32: this object answers both, and
    ``float()`` returns it unchanged, as :func:`linear_cross_entropy` already computes its softmax
    statistics in fp32 (its GEMMs stay in ``hidden``'s dtype, the point of mixed precision).
    """

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None):
        self.hidden, self.weight, self.bias = hidden, weight, bias

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return True if func is torch.is_floating_point else NotImplemented

    def float(self) -> "DecoderInput":
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    @property
    def shape(self):  # (bs, seq_len, vocab), as the logits would be
        return (*self.hidden.shape[:-1], self.weight.size(0))

    def logits(self) -> Tensor:
        return F.linear(self.hidden.float(), self.weight, self.bias)


class FusedLinear(nn.Linear):
    """An LM's decoder ``nn.Linear`` fused with :class:`LMLoss` (by :meth:`LMLoss.attach`).

    In training it returns a :class:`DecoderInput` (its input and parameters, no logits) for the
    loss to finish; in evaluation, logits as an ``nn.Linear``. Same parameters, same state dict.
    """

    def forward(self, x: Tensor):
        return DecoderInput(x, self.weight, self.bias) if self.training else super().forward(x)


class LMLoss:
    """Flat cross-entropy of an LM: fused (:func:`linear_cross_entropy`) when the model gives a
    :class:`DecoderInput`, fastai's ``CrossEntropyLossFlat`` when it gives logits.

    The loss owns the fusion: ``LMLoss().attach(model)`` turns the LM's decoder layer into a
    :class:`FusedLinear` (in place: the parameters, weight tying and optimiser state stay), so
    that in training the model hands the loss the decoder's input instead of the logits;
    :meth:`detach` turns it back. Without ``attach`` the loss takes logits, as any LM loss.
    ``ulmfit_lm_learner(fused_loss=True)`` (the default) attaches it.
    """

    def __init__(self, chunk: int = 128):
        from fastai.losses import CrossEntropyLossFlat
        self.chunk, self.flat = chunk, CrossEntropyLossFlat()

    @staticmethod
    def _decoder(model: nn.Module) -> nn.Linear:
        layer = getattr(getattr(model, "decoder", None), "decoder", None)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"expected an LM with a linear decoder at .decoder.decoder, got {type(model).__name__}")
        return layer

    def attach(self, model: nn.Module) -> nn.Module:
        """Fuse ``model``'s decoder layer with this loss (training only); returns ``model``."""
        self._decoder(model).__class__ = FusedLinear
        return model

    @staticmethod
    def detach(model: nn.Module) -> nn.Module:
        """Undo :meth:`attach`: the decoder returns logits again in training."""
        layer = LMLoss._decoder(model)
        if type(layer) is FusedLinear:
            layer.__class__ = nn.Linear
        return model

    def __call__(self, pred, target: Tensor) -> Tensor:
        if isinstance(pred, DecoderInput):
            h = pred.hidden.reshape(-1, pred.hidden.size(-1))
            return linear_cross_entropy(h, pred.weight, pred.bias, target.reshape(-1), self.chunk)
        return self.flat(pred, target)

    def activation(self, x):
        return self.flat.activation(x)

    def decodes(self, x):
        return self.flat.decodes(x)

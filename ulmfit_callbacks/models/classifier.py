"""ULMFiT classifier: BPT3C encoder with masked concat pooling, and the BN/Dropout/Linear head."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["BPT3CEncoder", "PoolingClassifierHead", "ULMFiTClassifier"]


class BPT3CEncoder(nn.Module):
    r"""BPT3C (ULMFiT Sec. 3.3) with concat pooling over every token.

    A document is read in chunks of ``bptt`` tokens, the hidden state carried from chunk to
    chunk; the output is :math:`h_c = [h_T, \mathrm{maxpool}(H), \mathrm{meanpool}(H)]` over the
    last layer's outputs :math:`H` of *all* real tokens (padding masked), accumulated chunk by
    chunk. Gradients flow only through the chunks that start inside each document's last
    ``max_len`` tokens (fastai's ``SentenceEncoder`` rule); earlier chunks run without a graph,
    so training memory does not grow with document length.

    Any padding layout works (left, right, mixed): each row's real tokens are first moved to
    the front, keeping their order, so every document starts from a zero state.
    ``module`` is an AWD-LSTM encoder (ours or fastai's ``AWD_LSTM``): ``reset()`` plus a
    forward that carries its hidden state and returns the last layer's outputs.

    One device-to-host copy per batch (the lengths and whether the batch is right-padded): which
    rows each chunk runs and which need a graph is decided on the host, so the chunk loop queues
    GPU work without waiting for it.
    """

    def __init__(self, module: nn.Module, bptt: int = 70, max_len: int = 1400, pad_idx: int = 1):
        super().__init__()
        if bptt < 1 or max_len < 1:
            raise ValueError(f"bptt and max_len must be >= 1, got {bptt}, {max_len}")
        self.module, self.bptt, self.max_len, self.pad_idx = module, bptt, max_len, pad_idx

    def reset(self):
        getattr(self.module, "reset", lambda: None)()

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = tokens.as_subclass(Tensor) if type(tokens) is not Tensor else tokens
        real = tokens != self.pad_idx
        lengths = real.sum(1)
        right_padded = (real[:, :-1] >= real[:, 1:]).all()
        # the batch's one device-to-host copy: lengths and padding layout; the chunk bookkeeping runs on the host
        host = torch.cat([lengths, right_padded[None].to(lengths.dtype)]).tolist()
        lens_host, right_padded = np.array(host[:-1]), bool(host[-1])
        if (lens_host == 0).any():
            raise ValueError("a document in the batch has no tokens (only padding)")
        if not right_padded:  # real tokens to the front
            order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
            tokens = tokens.gather(1, order)
        sl = int(lens_host.max())
        # longest first, so that chunk i runs only the k rows that still have tokens (the module
        # keeps the first k rows of its state when the batch shrinks, as fastai's AWD_LSTM does)
        rows = torch.argsort(lengths, descending=True, stable=True)
        tokens, lengths = tokens[rows, :sl], lengths[rows]
        lens_host = -np.sort(-lens_host)  # the same order, on the host
        self.reset()
        grad_on = torch.is_grad_enabled()
        pos = torch.arange(sl, device=tokens.device)
        last = run_max = run_sum = None
        for i in range(0, sl, self.bptt):
            k = int((lens_host > i).sum())
            chunk, lens = tokens[:k, i: i + self.bptt], lengths[:k]
            n = chunk.size(1)
            # rows whose chunk starts inside their last max_len tokens
            n_grad = int((i >= lens_host[:k] - self.max_len).sum()) if grad_on else 0
            if n_grad:
                out = self.module(chunk)
                if n_grad < k:
                    out = torch.where((i >= lens - self.max_len)[:, None, None], out, out.detach())
            else:
                with torch.no_grad():
                    out = self.module(chunk)
            out = out.as_subclass(Tensor) if type(out) is not Tensor else out
            mask = (pos[i: i + n][None, :] < lens[:, None])[:, :, None]
            c_max = out.masked_fill(~mask, float("-inf")).max(1).values
            c_sum = out.masked_fill(~mask, 0.0).sum(1)
            ends_here = ((lens - 1 >= i) & (lens - 1 < i + n))[:, None]
            c_last = out[torch.arange(k, device=out.device), (lens - 1 - i).clamp(0, n - 1)]
            if last is None:  # i == 0: every row is active
                last, run_max, run_sum = torch.where(ends_here, c_last, torch.zeros_like(c_last)), c_max, c_sum
            else:
                last = torch.cat([torch.where(ends_here, c_last, last[:k]), last[k:]])
                run_max = torch.cat([torch.maximum(run_max[:k], c_max), run_max[k:]])
                run_sum = torch.cat([run_sum[:k] + c_sum, run_sum[k:]])
        inv = torch.argsort(rows)
        last, run_max, run_sum, lengths = last[inv], run_max[inv], run_sum[inv], lengths[inv]
        mean = run_sum / lengths[:, None].to(run_sum.dtype)
        return torch.cat([last, run_max, mean], 1)


class PoolingClassifierHead(nn.Sequential):
    """Two blocks of BatchNorm1d -> Dropout -> Linear, ReLU between (ULMFiT Sec. 3.3)."""

    def __init__(self, n_in: int, n_out: int, hidden: int = 50, ps: tuple[float, float] = (0.4, 0.1)):
        if len(ps) != 2:
            raise ValueError(f"ps must hold two dropout probabilities, got {ps}")
        super().__init__(nn.BatchNorm1d(n_in), nn.Dropout(ps[0]), nn.Linear(n_in, hidden), nn.ReLU(inplace=True),
                         nn.BatchNorm1d(hidden), nn.Dropout(ps[1]), nn.Linear(hidden, n_out))
        self.n_in, self.n_out, self.hidden, self.ps = n_in, n_out, hidden, tuple(float(p) for p in ps)


class ULMFiTClassifier(nn.Module):
    """BPT3C encoder + concat pooling + head. Returns logits ``(bs, n_classes)``."""

    def __init__(self, encoder: BPT3CEncoder, head: nn.Module, backwards: bool = False):
        super().__init__()
        self.encoder, self.head, self.backwards = encoder, head, backwards

    def reset(self):
        self.encoder.reset()

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.encoder(tokens))

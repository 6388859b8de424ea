"""Parameter splitters (one group per layer) and discriminative learning rates (ULMFiT Sec. 3.2).

Our grouping, chosen on purpose:

- **LM** ``[layer 0, ..., layer L-1, embedding + decoder]``. The decoder shares its weight
  with the embedding (weight tying), so that matrix is both the lowest and the output layer.
  We follow the original ULMFiT code and fastai: it sits in the *top* group (largest lr), as
  the output layer it is; the LSTM layers below get lr / 2.6, lr / 2.6^2, ... bottom-up.
  Untied, the embedding gets its own bottom group and the decoder the top one.
- **Classifier** ``[embedding, layer 0, ..., layer L-1, head]``: the paper's order, so
  discriminative lrs and gradual unfreezing go from the head down to the embedding.
"""
from __future__ import annotations

import numpy as np
from torch import nn

__all__ = ["lm_splitter", "classifier_splitter", "discriminative_lrs"]


def _params(*modules: nn.Module) -> list[nn.Parameter]:
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def lm_splitter(model: nn.Module) -> list[list[nn.Parameter]]:
    """Groups of :class:`~ulmfit_callbacks.models.AWDLSTMLanguageModel` (see the module docstring)."""
    enc, dec = model.encoder, model.decoder
    layers = [_params(l) for l in enc.layers]
    if model.config.tie_weights:
        return layers + [_params(enc.embedding, dec)]
    return [_params(enc.embedding)] + layers + [_params(dec)]


def classifier_splitter(model: nn.Module) -> list[list[nn.Parameter]]:
    """Groups of :class:`~ulmfit_callbacks.models.ULMFiTClassifier`: embedding, each layer, head."""
    enc = model.encoder.module
    return [_params(enc.embedding)] + [_params(l) for l in enc.layers] + [_params(model.head)]


def discriminative_lrs(lr: float, n_groups: int, decay: float = 2.6) -> np.ndarray:
    """The paper's discriminative lrs, bottom group first: ``eta^(l-1) = eta^l / decay``, top = ``lr``.

    >>> discriminative_lrs(0.01, 3).round(6).tolist()
    [0.001479, 0.003846, 0.01]
    """
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    if decay <= 0:
        raise ValueError(f"decay must be > 0, got {decay}")
    return lr / decay ** np.arange(n_groups - 1, -1, -1, dtype=np.float64)

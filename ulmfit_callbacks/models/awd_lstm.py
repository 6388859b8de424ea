"""AWD-LSTM (Merity et al. 2017, "Regularizing and Optimizing LSTM Language Models").

Our own implementation with plain tensors only. Weights convert by parameter name to and
from fastai's ``AWD_LSTM`` + ``LinearDecoder`` (see :func:`to_fastai_state_dict`).

Regularisation, as in the paper:

- embedding dropout: whole rows of the embedding matrix are dropped (``embed_p``);
- locked (variational) dropout: one mask per sequence, shared over time, on the LSTM input
  (``input_p``), between layers (``hidden_p``) and on the decoder input (``output_p``);
- DropConnect weight dropout on each layer's hidden-to-hidden matrix (``weight_p``), applied
  functionally each forward: no weight copy is stored, so the module deep-copies and works
  with ``torch.optim.swa_utils.AveragedModel``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .qrnn import QRNNLayer

__all__ = ["AWDLSTMConfig", "CLASSIFIER_DROPOUTS", "LockedDropout", "WeightDropLSTM", "cudnn_flat_weights", "AWDLSTM",
           "LinearDecoder", "AWDLSTMLanguageModel", "to_fastai_state_dict", "from_fastai_state_dict"]


@dataclass(frozen=True)
class AWDLSTMConfig:
    """Sizes and dropouts of an AWD-LSTM. Defaults are the paper's LM (fastai's ``awd_lstm_lm_config``)."""
    emb_sz: int = 400       # embedding size = size of the last LSTM layer (tied decoder)
    n_hid: int = 1152       # hidden size of the inner LSTM layers
    n_layers: int = 3
    pad_idx: int = 1        # fastai's xxpad
    embed_p: float = 0.02   # embedding (row) dropout
    input_p: float = 0.25   # locked dropout on the embeddings
    hidden_p: float = 0.15  # locked dropout between LSTM layers
    weight_p: float = 0.2   # DropConnect on hidden-to-hidden weights
    output_p: float = 0.1   # locked dropout before the decoder (LM) or first head dropout (classifier)
    tie_weights: bool = True
    out_bias: bool = True
    arch: str = "lstm"      # "lstm" (AWD-LSTM) or "qrnn" (QRNN layers, as in MultiFiT)

    def __post_init__(self):
        if self.arch not in ("lstm", "qrnn"):
            raise ValueError(f"AWDLSTMConfig.arch must be 'lstm' or 'qrnn', got {self.arch!r}")
        for f in ("emb_sz", "n_hid", "n_layers"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"AWDLSTMConfig.{f} must be >= 1, got {getattr(self, f)}")
        for f in ("embed_p", "input_p", "hidden_p", "weight_p", "output_p"):
            p = getattr(self, f)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"AWDLSTMConfig.{f} must be in [0, 1), got {p}")

    def scaled(self, drop_mult: float) -> "AWDLSTMConfig":
        """The same config with every dropout multiplied by ``drop_mult`` (fastai's ``drop_mult``)."""
        if drop_mult < 0:
            raise ValueError(f"drop_mult must be >= 0, got {drop_mult}")
        return dataclasses.replace(self, **{f: getattr(self, f) * drop_mult for f in
                                            ("embed_p", "input_p", "hidden_p", "weight_p", "output_p")})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AWDLSTMConfig":
        """Build from a dict, refusing keys this config does not have."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown AWDLSTMConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


# fastai's awd_lstm_clas_config dropouts: the classifier is regularised more than the LM.
CLASSIFIER_DROPOUTS = dict(embed_p=0.05, input_p=0.4, hidden_p=0.3, weight_p=0.5, output_p=0.4)


class LockedDropout(nn.Module):
    """Variational dropout: one Bernoulli mask per sequence, shared over the time axis (dim 1)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(x.size(0), 1, *x.shape[2:]).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def embedding_dropout(emb: nn.Embedding, words: Tensor, p: float, training: bool) -> Tensor:
    """Drop whole embedding rows (words) with probability ``p``, rescaling the kept ones."""
    w = emb.weight
    if training and p > 0:
        w = w * w.new_empty(w.size(0), 1).bernoulli_(1 - p).div_(1 - p)
    return F.embedding(words, w, emb.padding_idx)


def cudnn_flat_weights(weights: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """``(W_ih, W_hh, b_ih, b_hh)`` as views into one new contiguous buffer, in that order: the
    flat layout ``nn.LSTM.flatten_parameters`` gives a one-layer LSTM, which cuDNN uses in place.
    Separate tensors (the DropConnect'ed ``W_hh`` is new every forward) are copied into such a
    buffer by cuDNN on every call, with the warning "RNN module weights are not part of single
    contiguous chunk of memory". One ``cat`` (differentiable: gradients reach the parameters) does
    that copy instead, values unchanged. ``benchmarks/gpu_check.py`` checks the warning is gone.
    """
    flat = torch.cat([w.reshape(-1) for w in weights])
    return tuple(v.view_as(w) for v, w in zip(flat.split([w.numel() for w in weights]), weights))


class WeightDropLSTM(nn.Module):
    """One LSTM layer with DropConnect (Wan et al. 2013) on its hidden-to-hidden matrix.

    ``W_hh`` is dropped element-wise (scaled by 1/(1-p)) once per forward, so the same mask
    applies at every time step. The dropped matrix is a temporary of the forward pass; the
    parameters are plain leaves and gradients reach ``weight_hh`` through the mask. The kernel
    gets contiguous weights, on a GPU in cuDNN's flat layout (:func:`cudnn_flat_weights`).
    """

    def __init__(self, n_in: int, n_out: int, weight_p: float = 0.0):
        super().__init__()
        self.n_in, self.n_out, self.weight_p = n_in, n_out, weight_p
        self.weight_ih = nn.Parameter(torch.empty(4 * n_out, n_in))
        self.weight_hh = nn.Parameter(torch.empty(4 * n_out, n_out))
        self.bias_ih = nn.Parameter(torch.empty(4 * n_out))
        self.bias_hh = nn.Parameter(torch.empty(4 * n_out))
        bound = 1 / math.sqrt(n_out)  # nn.LSTM's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        w_hh = F.dropout(self.weight_hh, self.weight_p, self.training) if self.weight_p else self.weight_hh
        weights = (self.weight_ih, w_hh, self.bias_ih, self.bias_hh)
        weights = cudnn_flat_weights(weights) if torch.backends.cudnn.is_acceptable(x) else tuple(w.contiguous() for w in weights)
        # The functional LSTM kernel behind nn.LSTM (one layer, batch first, no inner dropout).
        out, h, c = torch._VF.lstm(x, state, weights, True, 1, 0.0, self.training, False, True)
        return out, (h, c)

    @property
    def state_sizes(self) -> tuple[int, int]:
        return self.n_out, self.n_out

    def extra_repr(self) -> str:
        return f"{self.n_in}, {self.n_out}, weight_p={self.weight_p}"


class AWDLSTM(nn.Module):
    """AWD-LSTM encoder: embedding -> n_layers LSTMs -> last-layer outputs ``(bs, seq_len, emb_sz)``.

    With ``config.arch == "qrnn"`` the layers are :class:`~ulmfit_callbacks.models.qrnn.QRNNLayer`
    (same dropouts, state handling, splitters and callbacks).

    The hidden state is carried from one call to the next (truncated BPTT) and detached;
    :meth:`reset` zeroes it. A change of batch size keeps the first rows (as fastai does).
    """

    def __init__(self, vocab_sz: int, config: AWDLSTMConfig | None = None):
        super().__init__()
        self.config = c = config or AWDLSTMConfig()
        self.vocab_sz = vocab_sz
        self.embedding = nn.Embedding(vocab_sz, c.emb_sz, padding_idx=c.pad_idx)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        sizes = [c.emb_sz] + [c.n_hid] * (c.n_layers - 1) + [c.emb_sz]
        if c.arch == "qrnn":  # width-2 gate convolution on the first layer, as fastai and awd-lstm-lm
            self.layers = nn.ModuleList(QRNNLayer(sizes[i], sizes[i + 1], c.weight_p, window=2 if i == 0 else 1)
                                        for i in range(c.n_layers))
        else:
            self.layers = nn.ModuleList(WeightDropLSTM(sizes[i], sizes[i + 1], c.weight_p) for i in range(c.n_layers))
        self.input_dp = LockedDropout(c.input_p)
        self.hidden_dps = nn.ModuleList(LockedDropout(c.hidden_p) for _ in range(c.n_layers - 1))
        self.hidden: list[tuple[Tensor, Tensor]] | None = None

    def reset(self):
        """Forget the hidden state (start of a new text stream or document batch)."""
        self.hidden = None

    def _state(self, bs: int, ref: Tensor) -> list[tuple[Tensor, Tensor]]:
        zeros = [tuple(ref.new_zeros(1, bs, n) for n in l.state_sizes) for l in self.layers]
        if self.hidden is None:
            return zeros
        old_bs = self.hidden[0][0].size(1)
        if old_bs == bs:
            return self.hidden
        if old_bs > bs:
            return [(h[:, :bs].contiguous(), c[:, :bs].contiguous()) for h, c in self.hidden]
        return [(torch.cat([h, z[:, old_bs:]], 1), torch.cat([c, zc[:, old_bs:]], 1))
                for (h, c), (z, zc) in zip(self.hidden, zeros)]

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"AWDLSTM expects token ids of shape (batch, seq_len), got {tuple(tokens.shape)}")
        tokens = tokens.as_subclass(Tensor) if type(tokens) is not Tensor else tokens
        x = self.input_dp(embedding_dropout(self.embedding, tokens, self.config.embed_p, self.training))
        state = self._state(tokens.size(0), self.embedding.weight)
        new_state = []
        dtype = self.embedding.weight.dtype  # carried state in the parameters' dtype, also after autocast
        for i, layer in enumerate(self.layers):
            x, hc = layer(x, state[i])
            new_state.append((hc[0].detach().to(dtype), hc[1].detach().to(dtype)))
            if i < len(self.hidden_dps):
                x = self.hidden_dps[i](x)
        self.hidden = new_state
        return x


class LinearDecoder(nn.Module):
    """Output layer of the LM; returns ``(logits, raw_output, dropped_output)`` as fastai's does.

    The logits come from ``self.decoder`` (an ``nn.Linear``, tied to the embedding);
    :meth:`~ulmfit_callbacks.losses.LMLoss.attach` fuses that layer with the loss, which then
    computes decoder and cross-entropy together in training (the model code does not change).
    """

    def __init__(self, vocab_sz: int, emb_sz: int, output_p: float, bias: bool = True):
        super().__init__()
        self.output_dp = LockedDropout(output_p)
        self.decoder = nn.Linear(emb_sz, vocab_sz, bias=bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        if bias:
            nn.init.zeros_(self.decoder.bias)

    def forward(self, raw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dropped = self.output_dp(raw)
        return self.decoder(dropped), raw, dropped


class AWDLSTMLanguageModel(nn.Module):
    """AWD-LSTM language model: encoder + (tied) linear decoder.

    ``forward`` returns ``(logits, raw_output, dropped_output)``, the layout fastai's
    ``RNNCallback`` expects; :class:`~ulmfit_callbacks.regularization.ActivationRegularizer`
    unpacks it and adds AR/TAR.
    """

    def __init__(self, vocab_sz: int, config: AWDLSTMConfig | None = None, backwards: bool = False):
        super().__init__()
        self.config = config or AWDLSTMConfig()
        self.backwards = backwards
        self.encoder = AWDLSTM(vocab_sz, self.config)
        self.decoder = LinearDecoder(vocab_sz, self.config.emb_sz, self.config.output_p, self.config.out_bias)
        if self.config.tie_weights:
            self.decoder.decoder.weight = self.encoder.embedding.weight  # weight tying (Inan et al., Press & Wolf)

    @property
    def vocab_sz(self) -> int:
        return self.encoder.vocab_sz

    def reset(self):
        self.encoder.reset()

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.decoder(self.encoder(tokens))


# ---------------------------------------------------------------------------------------------
# Conversion to and from fastai's parameter names (fastai's own loader goes by key order).
# ---------------------------------------------------------------------------------------------
_LAYER_KEYS = {"weight_ih": "module.weight_ih_l0", "weight_hh": "weight_hh_l0_raw",
               "bias_ih": "module.bias_ih_l0", "bias_hh": "module.bias_hh_l0"}


def _encoder_key_map(n_layers: int, ours: str = "encoder.", theirs: str = "0.") -> dict[str, list[str]]:
    m = {f"{ours}embedding.weight": [f"{theirs}encoder.weight", f"{theirs}encoder_dp.emb.weight"]}
    for l in range(n_layers):
        for k, v in _LAYER_KEYS.items():
            m[f"{ours}layers.{l}.{k}"] = [f"{theirs}rnns.{l}.{v}"]
    return m


def _n_layers(keys, pattern: str) -> int:
    import re
    idx = [int(m.group(1)) for k in keys if (m := re.search(pattern, k))]
    if not idx:
        raise ValueError("no LSTM layers found in the state dict: is it an AWD-LSTM checkpoint?")
    return max(idx) + 1


def to_fastai_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our LM state dict -> fastai ``SequentialRNN(AWD_LSTM, LinearDecoder)`` state dict."""
    if any(k.startswith("encoder.layers.") and k.endswith(".weight") for k in state_dict):
        raise ValueError("this is a QRNN model: fastai's AWD_LSTM checkpoints hold LSTM weights only")
    n = _n_layers(state_dict, r"^encoder\.layers\.(\d+)\.")
    out = {}
    for ours, theirs in _encoder_key_map(n).items():
        for t in theirs:
            out[t] = state_dict[ours].detach().clone()
    out["1.decoder.weight"] = state_dict.get("decoder.decoder.weight", state_dict["encoder.embedding.weight"]).detach().clone()
    if "decoder.decoder.bias" in state_dict:
        out["1.decoder.bias"] = state_dict["decoder.decoder.bias"].detach().clone()
    return out


def from_fastai_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """fastai LM state dict (``0.encoder.weight``, ``0.rnns.0.weight_hh_l0_raw``, ...) -> ours.

    Also accepts fastai's classifier layout (``0.module.`` prefix); the head is not converted.
    """
    theirs = "0.module." if any(k.startswith("0.module.") for k in state_dict) else "0."
    n = _n_layers(state_dict, r"rnns\.(\d+)\.")
    out = {}
    for ours, names in _encoder_key_map(n, theirs=theirs).items():
        key = next((k for k in names if k in state_dict), None)
        if key is None:
            raise KeyError(f"fastai state dict has no {names[0]!r} (needed for {ours!r})")
        out[ours] = state_dict[key].detach().clone()
    if "1.decoder.weight" in state_dict:
        out["decoder.decoder.weight"] = state_dict["1.decoder.weight"].detach().clone()
    if "1.decoder.bias" in state_dict:
        out["decoder.decoder.bias"] = state_dict["1.decoder.bias"].detach().clone()
    return out

"""Pretrained LM weights in fastai's layout (``.pth`` state dict + ``itos`` token list)."""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .models.awd_lstm import from_fastai_state_dict
from .vocab import Vocab

__all__ = ["PretrainedReport", "load_pretrained", "load_weights_file", "read_itos", "find_pretrained_files", "wt103_files"]


@dataclass
class PretrainedReport:
    matched: int
    total: int
    source: str

    def __str__(self):
        return (f"pretrained weights from {self.source}: {self.matched:,} of {self.total:,} vocabulary tokens "
                f"({self.matched / max(self.total, 1):.1%}) found in the pretrained vocabulary; the rest start "
                "from the mean embedding")


class _ListOfStrUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # a token list needs no class at all
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: an itos file holds only strings")


def read_itos(path: str | os.PathLike) -> list[str]:
    """A token list from fastai's ``itos*.pkl`` (loaded without executing code) or our vocab JSON."""
    path = Path(path)
    if path.suffix == ".json":
        return Vocab.load(path).itos
    obj = _ListOfStrUnpickler(io.BytesIO(path.read_bytes())).load()
    if not isinstance(obj, list) or not all(isinstance(t, str) for t in obj):
        raise ValueError(f"{path} does not hold a list of tokens")
    return obj


class _Inert:
    """Stands in for any class a checkpoint names beyond tensors and containers: holds its
    arguments and state, runs none of its code."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):
        return _Inert(*args, **kwargs)


_TENSOR_GLOBALS = {("collections", "OrderedDict"), ("torch", "Size"), ("torch", "device")}


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _TENSOR_GLOBALS or (module == "torch._utils" and name.startswith("_rebuild_")) \
                or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        return _Inert  # e.g. fastcore's L or fastai's optimizer state classes


class _TensorsOnly:  # a pickle module for torch.load: everything but tensors becomes inert
    Unpickler = _TensorsOnlyUnpickler
    load = pickle.load


def load_weights_file(path: str | os.PathLike) -> dict:
    """A state dict from a ``.pth``/``.pt`` file, never running code from the file.

    Read with ``weights_only=True``; a file that fails that check because it also holds
    other objects (fastai's ``Learner.save(with_opt=True)`` writes ``{'model': ..., 'opt': ...}``
    with fastcore objects in the optimizer state) is read again with every class except tensors
    replaced by an inert stand-in, and only its ``'model'`` part is kept.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TensorsOnly)
        except Exception as e:
            raise ValueError(f"{path} is not a readable weights file: {e}") from None
        if not (isinstance(obj, dict) and isinstance(obj.get("model"), dict)):
            raise ValueError(f"{path} holds objects other than tensors and no 'model' state dict: refused "
                             "(loading it would mean running code from the file)") from None
    except Exception as e:
        raise ValueError(f"{path} is not a readable weights file: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def find_pretrained_files(folder: str | os.PathLike) -> tuple[Path, Path]:
    """The ``.pth`` and ``itos`` files of an unpacked fastai model archive (e.g. ``wt103-fwd``)."""
    folder = Path(folder)
    pths, itos = sorted(folder.glob("*.pth")), sorted(folder.glob("*.pkl")) + sorted(folder.glob("*.json"))
    if len(pths) != 1 or len(itos) != 1:
        raise FileNotFoundError(f"{folder} should hold one .pth weights file and one itos .pkl/.json file, "
                                f"found {[p.name for p in pths + itos]}")
    return pths[0], itos[0]


def wt103_files(backwards: bool = False) -> tuple[Path, Path]:
    """Download (through fastai's own URLs, cached by fastai) the WikiText-103 AWD-LSTM weights.

    Needs network access; nothing in the library calls this unless asked for ``"wt103"``.
    """
    from fastai.data.external import URLs, untar_data
    return find_pretrained_files(untar_data(URLs.WT103_BWD if backwards else URLs.WT103_FWD, c_key="model"))


def load_pretrained(model: nn.Module, weights: str | os.PathLike | dict, itos: str | os.PathLike | list[str],
                    vocab: Vocab | list[str]) -> PretrainedReport:
    """Load pretrained AWD-LSTM LM weights into our ``model``, mapping rows by token.

    ``weights``: a fastai-layout (``0.encoder.weight``...) or our-layout state dict, or its
    ``.pth`` path (read with ``weights_only=True``). Embedding and decoder-bias rows are matched
    by token into ``vocab``; tokens the pretrained vocabulary lacks get the mean row (paper and
    fastai). Refuses weights of another architecture size with a clear message.
    """
    source = str(weights) if not isinstance(weights, dict) else "a state dict"
    if not isinstance(weights, dict):
        weights = load_weights_file(weights)
    if "model" in weights and isinstance(weights["model"], dict):
        weights = weights["model"]
    if any(k.startswith("0.") for k in weights):
        weights = from_fastai_state_dict(weights)
    old_itos = read_itos(itos) if not isinstance(itos, list) else itos
    own = model.state_dict()
    problems = [f"{k}: pretrained {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in weights.items()
                if k in own and k not in ("encoder.embedding.weight", "decoder.decoder.weight", "decoder.decoder.bias")
                and v.shape != own[k].shape]
    emb = weights["encoder.embedding.weight"]
    if emb.shape[1] != own["encoder.embedding.weight"].shape[1]:
        problems.insert(0, f"embedding size: pretrained {emb.shape[1]} vs model {own['encoder.embedding.weight'].shape[1]}")
    n_layers_model = sum(1 for k in own if k.endswith(".weight_ih"))
    n_layers_pre = sum(1 for k in weights if k.endswith(".weight_ih"))
    if n_layers_model != n_layers_pre:
        problems.insert(0, f"layers: pretrained {n_layers_pre} vs model {n_layers_model}")
    if problems:
        raise ValueError("pretrained weights do not fit this architecture (" + "; ".join(problems[:4]) +
                         "): build the model with the pretrained config")
    if len(old_itos) != emb.shape[0]:
        raise ValueError(f"itos has {len(old_itos)} tokens but the pretrained embedding has {emb.shape[0]} rows")
    new_itos = vocab.itos if isinstance(vocab, Vocab) else list(vocab)  # fastai's vocab list works too
    old = {t: i for i, t in enumerate(old_itos)}
    idx = torch.tensor([old.get(t, -1) for t in new_itos])
    hit = idx >= 0

    def remap(w: torch.Tensor) -> torch.Tensor:
        new = w.mean(0, keepdim=True).expand(len(new_itos), *w.shape[1:]).clone()
        new[hit] = w[idx[hit]]
        return new

    out = {k: v for k, v in weights.items() if k in own}
    out["encoder.embedding.weight"] = remap(emb)
    if "decoder.decoder.weight" in own:
        out["decoder.decoder.weight"] = out["encoder.embedding.weight"] if model.config.tie_weights \
            else remap(weights.get("decoder.decoder.weight", emb))
    if "decoder.decoder.bias" in own and "decoder.decoder.bias" in weights:
        out["decoder.decoder.bias"] = remap(weights["decoder.decoder.bias"])
    missing = [k for k in own if k not in out]
    if missing:
        raise KeyError(f"pretrained weights lack {missing[:5]}")
    model.load_state_dict(out)
    return PretrainedReport(int(hit.sum()), len(new_itos), source)

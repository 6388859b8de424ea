"""Model folders: how every stage saves its model, and how a model is found by name.

A model folder is what a model hub takes as it is:

- ``model.safetensors``: the state dict (no pickle; read without executing anything),
- ``config.json``: ``kind`` (``"lm"`` / ``"classifier"``), the :class:`AWDLSTMConfig`, direction,
  classes, and every setting prediction needs (``max_tokens``, BPT3C and head sizes),
- ``vocab.json``: the token list, fastai's special tokens first,
- ``README.md``: a model card,

plus ``metrics.json``, ``history.csv`` and PNG plots. Folders of earlier versions
(``weights.pt``, a weights-only torch file) keep loading. Every file is written through
:func:`atomic_write`, so an interrupted save leaves the previous file intact.

:func:`resolve_model` turns what a user passes as ``pretrained=`` into a folder:
``"general"`` (the LM shipped in this package), a local folder, or a Hugging Face Hub id
(``"owner/name"``, fetched through ``huggingface_hub`` when online).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable

import torch

__all__ = ["atomic_write", "write_json", "save_model_folder", "read_model_folder", "resolve_model",
           "SHIPPED_MODELS", "shipped_model_path", "FORMAT"]

FORMAT = "ulmfit_callbacks.model/2"
SHIPPED_MODELS = ("general",)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable) -> Path:
    """Write ``data`` (bytes, text, or a function that writes to a binary file) to ``path`` atomically.

    The data go to a temporary file in the same folder, which is flushed, fsynced and renamed
    over ``path`` (``os.replace``); on any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, default=float))


def _card(meta: dict, metrics: dict | None) -> str:
    cfg = meta["config"]
    what = "language model" if meta["kind"] == "lm" else f"text classifier ({len(meta.get('classes') or [])} classes)"
    lines = [
        "---", "library_name: ulmfit_callbacks", "tags: [ulmfit, awd-lstm, fastai, text-classification]", "---", "",
        f"# ULMFiT {what}, {'backward' if meta['backwards'] else 'forward'}", "",
        f"AWD-LSTM ({cfg['arch']}) {cfg['emb_sz']}/{cfg['n_hid']}/{cfg['n_layers']} "
        f"(embedding / hidden / layers), vocabulary {meta.get('vocab_sz', '?'):,} tokens, "
        f"tokenizer {meta.get('tokenizer', {}).get('name', 'spacy')}.", "",
        "Load with `ulmfit_callbacks`: " + ("`ulmfit_lm_learner(dls, pretrained=FOLDER)` or "
                                            "`ulmfit finetune-lm DATA --pretrained FOLDER`" if meta["kind"] == "lm"
                                            else "`load_classifier(FOLDER)` or `ulmfit predict --model FOLDER`") + ".",
    ]
    if meta.get("classes"):
        lines += ["", "Classes: " + ", ".join(map(str, meta["classes"]))]
    if metrics:
        lines += ["", "## Validation metrics", ""] + [f"- {k}: {v}" for k, v in metrics.items() if v is not None]
    return "\n".join(lines) + "\n"


def save_model_folder(folder: str | os.PathLike, state_dict: dict, meta: dict, itos: list[str],
                      metrics: dict | None = None, dtype: torch.dtype | None = None, card: str | None = None) -> Path:
    """Write a model folder (see the module docstring). ``dtype``: store floats in this dtype (e.g. fp16)."""
    from safetensors.torch import save as st_save
    folder = Path(folder)
    tensors, tied, seen = {}, {}, {}
    for k, v in state_dict.items():
        key = (v.data_ptr(), v.shape, v.stride(), v.dtype)
        if key in seen:  # tied weights (embedding = decoder) are stored once
            tied[k] = seen[key]
            continue
        seen[key] = k
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous().clone()
    meta = dict(meta, format=FORMAT, vocab_sz=len(itos))
    atomic_write(folder / "model.safetensors", st_save(tensors, metadata={"format": FORMAT, "tied": json.dumps(tied)}))
    write_json(folder / "config.json", meta)
    write_json(folder / "vocab.json", {"itos": list(itos)})
    if metrics is not None:
        write_json(folder / "metrics.json", metrics)
    atomic_write(folder / "README.md", card if card is not None else _card(meta, metrics))
    return folder


def read_model_folder(folder: str | os.PathLike) -> tuple[dict, list[str], dict]:
    """``(meta, itos, state_dict)`` of a model folder (fp32 tensors), with clear errors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such model folder: {folder}")
    weights = folder / "model.safetensors"
    legacy = folder / "weights.pt"
    for f in ("config.json", "vocab.json"):
        if not (folder / f).exists():
            raise FileNotFoundError(f"{folder} is not a saved model: {f} is missing")
    if weights.exists():
        from safetensors import safe_open
        with safe_open(str(weights), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            tied = json.loads((f.metadata() or {}).get("tied", "{}"))
        state.update({k: state[v] for k, v in tied.items()})
    elif legacy.exists():
        state = torch.load(legacy, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder} is not a saved model: model.safetensors is missing")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    itos = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))["itos"]
    return meta, itos, state


def shipped_model_path(name: str, backwards: bool = False) -> Path:
    """Folder of an LM shipped inside this package (``name`` in :data:`SHIPPED_MODELS`)."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"no shipped model {name!r}; shipped: {list(SHIPPED_MODELS)}")
    p = Path(__file__).parent / "weights" / f"{name}-{'bwd' if backwards else 'fwd'}"
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"the shipped {name!r} LM is missing from this installation ({p}); "
                                "reinstall ulmfit_callbacks or pass a model folder")
    return p


def resolve_model(spec: str | os.PathLike | None, backwards: bool = False) -> Path | None:
    """The model folder that ``spec`` names, for the given direction.

    ``None`` or ``"none"``: no model. ``"general"``: the shipped general-domain LM. A local
    folder: itself, or its ``fwd``/``bwd`` (or ``general_fwd``/``general_bwd``) subfolder for the
    direction when it holds both. ``"owner/name"`` that is not a local path: a Hugging Face Hub
    repository in the same layout (one direction per repository, or ``fwd``/``bwd`` subfolders),
    downloaded through ``huggingface_hub`` (needs network).
    """
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if isinstance(spec, str) and spec in SHIPPED_MODELS:
        return shipped_model_path(spec, backwards)
    p = Path(spec).expanduser()
    if not p.exists() and isinstance(spec, str) and _HUB_ID.match(spec):
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise ModuleNotFoundError(f"{spec!r} looks like a Hugging Face Hub id: `pip install huggingface_hub` "
                                      "to load it, or pass a local folder") from None
        p = Path(snapshot_download(repo_id=spec))
    if not p.exists():
        raise FileNotFoundError(f"no model {spec!r}: not a shipped model ({list(SHIPPED_MODELS)}), "
                                "a folder, or a Hugging Face Hub id")
    d = "bwd" if backwards else "fwd"
    for sub in (d, f"general_{d}", f"lm_{d}"):
        if not (p / "config.json").exists() and (p / sub / "config.json").exists():
            return p / sub
    return p

"""Atomic, weights-only checkpoints of a learner: model, optimizer, every callback's state, meta JSON.

A checkpoint is one file written by ``torch.save`` to a temporary name and renamed into place
(``os.replace``), so an interrupted save leaves the previous checkpoint intact. It holds only
tensors and plain values and is read with ``torch.load(..., weights_only=True)``: loading never
unpickles arbitrary objects.

Random states saved and restored: torch's CPU generator, every CUDA device's generator (when
CUDA is available at save; restored where the devices exist), numpy's and Python's global
generators and each loader's own ``rng``. A model wrapped for data parallelism (DDP, as inside
``learn.distrib_ctx()``, or ``DataParallel``) is saved and loaded as the plain model.
"""
from __future__ import annotations

import json
import numbers
import os
import random
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.torch_core import rank_distrib
from fastcore.foundation import L
from torch import nn

from .artifact import atomic_write
from .base import ResumableCallback

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "EpochCheckpoint", "resume_fit", "atomic_save",
           "CheckpointError"]

FORMAT = "ulmfit_callbacks.checkpoint/1"


class CheckpointError(ValueError):
    """The file is not a readable ulmfit_callbacks checkpoint."""


def atomic_save(obj, path: str | os.PathLike):
    """``torch.save`` through :func:`~ulmfit_callbacks.artifact.atomic_write` (temporary file, fsync, rename)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _plain(x):
    """Tensors and plain Python values only (numpy scalars become Python numbers)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, (bool, str)) or x is None:
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return float(x)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.copy())
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, L)):
        return [_plain(v) for v in x]
    raise TypeError(f"cannot checkpoint a {type(x).__name__} weights-only")


def _loader_rng_states(learn) -> dict:
    out = {}
    for i, dl in enumerate(getattr(learn.dls, "loaders", [])):
        rng = getattr(dl, "rng", None)
        if isinstance(rng, np.random.Generator):
            out[str(i)] = rng.bit_generator.state
    return out


def _rng_states() -> dict:
    """The global random states, as tensors and plain values (readable ``weights_only``)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else None,
            "numpy_rng": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                          "cached_gaussian": float(cached)},
            "python_rng": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss}}


def _set_rng_states(state: dict):
    """Restore what :func:`_rng_states` saved; parts a checkpoint lacks (older files) are left alone."""
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        for i, s in enumerate(state["cuda_rng"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    if state.get("numpy_rng") is not None:
        n = state["numpy_rng"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if state.get("python_rng") is not None:
        p = state["python_rng"]
        random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))


def _plain_model(learn: Learner) -> nn.Module:
    """The learner's model without a data-parallel wrapper."""
    m = learn.model
    return m.module if isinstance(m, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else m


def save_checkpoint(learn: Learner, path: str | os.PathLike, with_opt: bool = True, extra: dict | None = None):
    """Save model, optimizer, callback states, RNG states and meta (config, vocab, direction) atomically."""
    model = _plain_model(learn)
    meta = {"format": FORMAT, "epoch": int(getattr(learn, "epoch", 0)), "loader_rng": _loader_rng_states(learn)}
    cfg = getattr(getattr(model, "config", None), "to_dict", None) or \
        getattr(getattr(getattr(getattr(model, "encoder", None), "module", None), "config", None), "to_dict", None)
    if cfg:
        meta["config"] = cfg()
    dls = learn.dls
    if hasattr(dls, "vocab"):
        meta["data"] = {k: v for k, v in dls.meta.items()} if hasattr(dls, "meta") else {}
        meta["itos"] = dls.vocab.itos
    meta.update(extra or {})
    state = {
        "format": FORMAT,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "opt": _plain(learn.opt.state_dict()) if (with_opt and learn.opt is not None) else None,
        "callbacks": {cb.name: _plain(cb.state_dict()) for cb in learn.cbs if isinstance(cb, ResumableCallback)},
        **_rng_states(),
        "meta_json": json.dumps(meta),
    }
    atomic_save(state, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``weights_only=True``; clear errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, random bytes...
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated, corrupt or not weights-only): {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ulmfit_callbacks checkpoint (no {FORMAT!r} marker)")
    state["meta"] = json.loads(state.pop("meta_json"))
    return state


def load_checkpoint(learn: Learner, path: str | os.PathLike, with_opt: bool = True, strict: bool = True) -> dict:
    """Load a checkpoint into ``learn`` (model, optimizer, states of its callbacks, RNGs); returns its meta."""
    state = read_checkpoint(path)
    meta = state["meta"]
    dmeta = getattr(learn.dls, "meta", None)
    if dmeta is not None and "data" in meta:
        for k in ("kind", "backwards", "vocab_sz"):
            if k in meta["data"] and meta["data"][k] != dmeta[k]:
                raise CheckpointError(f"checkpoint was trained on data with {k}={meta['data'][k]!r}, "
                                      f"this learner's data have {k}={dmeta[k]!r}")
    model = _plain_model(learn)
    try:
        model.load_state_dict(state["model"], strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit this model: {e}") from None
    if with_opt and state["opt"] is not None:
        if learn.opt is None:
            learn.create_opt()
        dev = next(model.parameters()).device
        opt_sd = state["opt"]
        opt_sd["state"] = [{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
                           for s in opt_sd["state"]]
        learn.opt.load_state_dict(opt_sd)
    by_name = {cb.name: cb for cb in learn.cbs if isinstance(cb, ResumableCallback)}
    for name, cb_state in state["callbacks"].items():
        if name in by_name:
            by_name[name].load_state_dict(cb_state)
    _set_rng_states(state)
    for i, s in meta.get("loader_rng", {}).items():
        learn.dls.loaders[int(i)].rng.bit_generator.state = s
    return meta


class EpochCheckpoint(Callback):
    """Save a resumable checkpoint after every epoch (``path`` is overwritten atomically); in
    distributed training only rank 0 writes it (as fastai's ``Learner.save``)."""
    order = 90  # after every callback has updated its state for the epoch

    def __init__(self, path: str | os.PathLike, with_opt: bool = True):
        self.path, self.with_opt = Path(path), with_opt

    def after_epoch(self):
        if rank_distrib():
            return
        save_checkpoint(self.learn, self.path, self.with_opt, extra={"epoch": self.epoch + 1})


def resume_fit(learn: Learner, n_epoch: int, path: str | os.PathLike, cbs=(), lr=None):
    """Continue an interrupted ``learn.fit(n_epoch, cbs=cbs)`` from the checkpoint at ``path``.

    ``cbs`` must be the same kind of callbacks the interrupted fit had; their states are loaded
    from the checkpoint, then the remaining epochs run with the same schedule.
    """
    cbs = list(cbs)
    learn.add_cbs(cbs)
    try:
        meta = load_checkpoint(learn, path)
        learn.fit(n_epoch, lr=lr, start_epoch=meta["epoch"])
    finally:
        learn.remove_cbs(cbs)

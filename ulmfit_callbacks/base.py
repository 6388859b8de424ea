"""A small base for resumable callbacks: ``state_dict`` of plain values, loaded once per fit."""
from __future__ import annotations

import copy

from fastai.callback.core import Callback

__all__ = ["ResumableCallback"]


class ResumableCallback(Callback):
    """Callback whose progress (listed in ``_state_attrs``) survives a checkpoint.

    ``state_dict()`` holds plain Python values and tensors only, so it loads with
    ``torch.load(..., weights_only=True)``. A loaded state wins over constructor arguments;
    ``self._resumed`` tells ``before_fit`` not to start from scratch.
    """
    _state_attrs: tuple[str, ...] = ()
    _resumed = False

    def state_dict(self) -> dict:
        return {k: copy.deepcopy(getattr(self, k)) for k in self._state_attrs}

    def load_state_dict(self, state: dict):
        missing = set(self._state_attrs) - set(state)
        if missing:
            raise KeyError(f"{type(self).__name__} state lacks {sorted(missing)}")
        for k in self._state_attrs:
            setattr(self, k, copy.deepcopy(state[k]))
        self._resumed = True

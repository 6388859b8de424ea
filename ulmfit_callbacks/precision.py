"""bf16 autocast for the model forward, on CPU (AVX-512/AMX) or GPU; the loss stays fp32.

fastai's ``MixedPrecision`` enters ``autocast('cuda')``, which does nothing on a CPU.
"""
from __future__ import annotations

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision

__all__ = ["BF16Autocast"]


def _to_float(x):
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, (tuple, list)):
        return type(x)(_to_float(v) for v in x)
    return x


class BF16Autocast(Callback):
    """Run the model's forward under ``torch.autocast(<model device>, torch.bfloat16)``.

    Parameters, optimizer state and averaged weights stay fp32; the outputs are cast back to
    fp32, so the loss, AR/TAR and metrics are computed in fp32. No loss scaling is needed for
    bf16 (fp32's exponent range). The autocast region is opened and closed by forward hooks;
    the closing hook runs even when the forward raises, so no autocast state leaks. It refuses
    to run beside fastai's ``MixedPrecision`` on the same learner.
    """
    order = 10  # as fastai's MixedPrecision

    def __init__(self):
        self._handles = []
        self._ctx = []

    def _enter(self, module, args):
        ctx = torch.autocast(next(module.parameters()).device.type, dtype=torch.bfloat16)
        ctx.__enter__()
        self._ctx.append(ctx)

    def _exit(self, module, args, output):
        if self._ctx:
            self._ctx.pop().__exit__(None, None, None)
        return _to_float(output)

    def before_fit(self):
        if any(isinstance(cb, MixedPrecision) for cb in self.learn.cbs):
            raise ValueError("BF16Autocast and fastai's MixedPrecision (learn.to_fp16() / to_bf16()) would both set the "
                             "forward's precision: use one of them (MixedPrecision for fp16 with loss scaling on a GPU, "
                             "BF16Autocast for bf16 on a CPU or GPU)")
        self._remove()
        m = self.learn.model
        self._handles = [m.register_forward_pre_hook(self._enter),
                         m.register_forward_hook(self._exit, always_call=True)]

    def after_fit(self):
        self._remove()

    def _remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def __getstate__(self):  # hook handles are not picklable (learn.export)
        d = dict(self.__dict__)
        d["_handles"], d["_ctx"] = [], []
        return d

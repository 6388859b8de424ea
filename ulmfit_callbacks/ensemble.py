"""Forward + backward classifier ensemble: the paper's bidirectional model (Sec. 3.3)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from fastai.learner import Learner

from .data import ClassifierLoader, numericalize, tokenize
from .memory import release_memory

__all__ = ["ForwardBackwardEnsemble", "predict_texts", "predict_tokens"]


def predict_texts(learn: Learner, texts: Sequence[str], bs: int = 64, max_tokens: int | None = None,
                  bf16: bool = False) -> torch.Tensor:
    """Class probabilities for raw texts, in input order. Batches are sorted by length for speed.

    ``max_tokens``: default the model's own (saved with it by ``train_classifier``).
    """
    if len(texts) == 0:
        raise ValueError("no texts to predict")
    return predict_tokens(learn, tokenize(list(texts)), bs, max_tokens, bf16)


def predict_tokens(learn: Learner, tokens: Sequence[Sequence[str]], bs: int = 64,
                   max_tokens: int | None = None, bf16: bool = False) -> torch.Tensor:
    """Class probabilities for tokenised texts (first ``max_tokens`` of each), in input order.

    ``bf16``: run the model under bf16 autocast (AMX / tensor cores); the weights stay fp32.
    """
    dls = learn.dls
    max_tokens = max_tokens or getattr(learn, "max_tokens", None)
    tokens = [t[:max_tokens] for t in tokens] if max_tokens else tokens
    ids = numericalize(tokens, dls.vocab, dls.backwards)
    dl = ClassifierLoader(ids, np.zeros(len(ids), dtype=np.int64), bs=bs, shuffle=False, pad_idx=learn.model.encoder.pad_idx)
    return _probs(learn, dl, bf16)


@torch.no_grad()
def _probs(learn: Learner, dl: ClassifierLoader, bf16: bool = False) -> torch.Tensor:
    """Probabilities over a (non-shuffled) loader, returned in the loader's input order."""
    model = learn.model
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    order = dl.get_idxs()
    outs = []
    try:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            for i in range(0, len(order), dl.bs):
                outs.append(model(dl.pad(order[i: i + dl.bs]).to(dev)).float())
                release_memory()
    finally:
        model.train(was)
    logits = torch.cat(outs).cpu()  # one device-to-host copy
    probs = torch.sigmoid(logits) if getattr(learn.dls, "multi_label", False) else logits.softmax(-1)
    res = torch.empty_like(probs)
    res[torch.as_tensor(order)] = probs
    return res


class ForwardBackwardEnsemble:
    """Average of the class probabilities of a forward and a backward ULMFiT classifier.

    Both learners must share classes; each reads the texts in its own direction.
    """

    def __init__(self, forward: Learner, backward: Learner):
        if forward.dls.backwards or not backward.dls.backwards:
            raise ValueError("pass the forward learner first and the backward learner second")
        if list(forward.dls.classes) != list(backward.dls.classes):
            raise ValueError(f"the two classifiers have different classes: {forward.dls.classes} vs {backward.dls.classes}")
        self.forward, self.backward = forward, backward
        self.classes = list(forward.dls.classes)

    def get_preds(self, data=None, bs: int = 64) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(probs, targets)`` for a list of texts (targets ``None``) or a pair of validation loaders.

        ``data`` may be a list of texts, ``None`` (both learners' validation sets), or a pair of
        ``ClassifierLoader``s (forward, backward) over the same documents.
        """
        if data is None:
            data = (self.forward.dls.valid, self.backward.dls.valid)
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(d, ClassifierLoader) for d in data):
            f, b = _probs(self.forward, data[0]), _probs(self.backward, data[1])
            if not torch.equal(data[0].labels, data[1].labels):
                raise ValueError("the forward and backward loaders hold different labels: not the same documents")
            return (f + b) / 2, data[0].labels
        return self.predict_proba(tokens=tokenize(list(data)), bs=bs)["ensemble"], None

    def predict_proba(self, texts: Sequence[str] | None = None, tokens=None, bs: int = 64) -> dict[str, torch.Tensor]:
        """Probabilities of ``"forward"``, ``"backward"`` and their ``"ensemble"`` (the mean: the one
        place the ensemble rule lives) for raw ``texts`` or tokenised ``tokens``, in input order."""
        if (texts is None) == (tokens is None):
            raise ValueError("pass either texts or tokens")
        tokens = tokenize(list(texts)) if tokens is None else tokens
        out = {"forward": predict_tokens(self.forward, tokens, bs), "backward": predict_tokens(self.backward, tokens, bs)}
        out["ensemble"] = (out["forward"] + out["backward"]) / 2
        return out

    def predict(self, text: str) -> tuple[str, torch.Tensor]:
        """``(predicted class, probabilities)`` for one text."""
        p = self.get_preds([text])[0][0]
        return self.classes[int(p.argmax())], p

    def accuracy(self, data=None) -> float:
        probs, y = self.get_preds(data)
        if y is None:
            raise ValueError("accuracy needs labelled loaders, not raw texts")
        return float((probs.argmax(-1) == y).float().mean())

"""Forward + backward classifier ensemble: the paper's bidirectional model (Sec. 3.3)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from fastai.learner import Learner

from .corpus import Corpus, as_corpus
from .loaders import ClassifierLoader
from .memory import release_memory
from .vocab import numericalize

__all__ = ["ForwardBackwardEnsemble", "predict_proba"]


def predict_proba(learn: Learner, data: Corpus | Sequence[str], bs: int = 64, max_tokens: int | None = None,
                  bf16: bool = False) -> torch.Tensor:
    """Class probabilities of a classifier learner for a corpus or raw texts, in input order.

    Batches are sorted by length for speed. ``max_tokens``: default the model's own (saved with it
    by ``train_classifier``). ``bf16``: run under bf16 autocast (AMX / tensor cores); weights stay fp32.
    """
    dls = learn.dls
    data = as_corpus(data, tokenizer=dls.tokenizer)  # texts are tokenised as the model's training texts were
    if len(data) == 0:
        raise ValueError("no texts to predict")
    max_tokens = max_tokens or getattr(learn, "max_tokens", None)
    tokens = [t[:max_tokens] for t in data.tokens] if max_tokens else data.tokens
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
        if forward.dls.tokenizer != backward.dls.tokenizer:
            raise ValueError("the two classifiers read different tokens (their tokenizers differ)")
        self.forward, self.backward = forward, backward
        self.classes = list(forward.dls.classes)

    def get_preds(self, data=None, bs: int = 64) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(probs, targets)`` of the ensemble.

        ``data``: ``None`` (both learners' validation sets), a pair of ``ClassifierLoader``s
        (forward, backward) over the same documents, or a corpus / list of texts (targets: the
        corpus's labels as class indices, else ``None``).
        """
        if data is None:
            data = (self.forward.dls.valid, self.backward.dls.valid)
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(d, ClassifierLoader) for d in data):
            f, b = _probs(self.forward, data[0]), _probs(self.backward, data[1])
            if not torch.equal(data[0].labels, data[1].labels):
                raise ValueError("the forward and backward loaders hold different labels: not the same documents")
            return (f + b) / 2, data[0].labels
        data = as_corpus(data, tokenizer=self.forward.dls.tokenizer)
        y = None
        if data.labels is not None and not self.forward.dls.multi_label:
            y = torch.tensor([self.classes.index(l) for l in data.labels])
        return self.predict_proba(data, bs=bs)["ensemble"], y

    def predict_proba(self, data: Corpus | Sequence[str], bs: int = 64) -> dict[str, torch.Tensor]:
        """Probabilities of ``"forward"``, ``"backward"`` and their ``"ensemble"`` (the mean: the one
        place the ensemble rule lives) for a corpus or raw texts (tokenised once), in input order."""
        data = as_corpus(data, tokenizer=self.forward.dls.tokenizer)
        out = {"forward": predict_proba(self.forward, data, bs), "backward": predict_proba(self.backward, data, bs)}
        out["ensemble"] = (out["forward"] + out["backward"]) / 2
        return out

    def predict(self, text: str) -> tuple[str, torch.Tensor]:
        """``(predicted class, probabilities)`` for one text."""
        p = self.get_preds([text])[0][0]
        return self.classes[int(p.argmax())], p

    def accuracy(self, data=None) -> float:
        probs, y = self.get_preds(data)
        if y is None:
            raise ValueError("accuracy needs labelled data: loaders or a labelled Corpus, not raw texts")
        return float((probs.argmax(-1) == y).float().mean())

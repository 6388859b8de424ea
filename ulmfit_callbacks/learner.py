"""Learner factories: plain fastai ``Learner``s around our LM and classifier."""
from __future__ import annotations

import dataclasses
from functools import partial

import torch
from fastai.callback.core import Callback
from fastai.callback.rnn import ModelResetter
from fastai.learner import Learner
from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat
from fastai.metrics import Perplexity, accuracy, accuracy_multi
from fastai.optimizer import Adam

from .data import ULMFiTDataLoaders
from .losses import LMLoss
from .models.awd_lstm import AWDLSTM, CLASSIFIER_DROPOUTS, AWDLSTMConfig, AWDLSTMLanguageModel
from .models.classifier import BPT3CEncoder, PoolingClassifierHead, ULMFiTClassifier
from .pretrained import find_pretrained_files, load_pretrained, wt103_files
from .regularization import ActivationRegularizer
from .splitters import classifier_splitter, lm_splitter

__all__ = ["ulmfit_lm_learner", "ulmfit_classifier_learner", "DataCheck", "encoder_state_dict", "load_encoder"]


class DataCheck(Callback):
    """Refuses, before training, data whose direction, kind or vocabulary size the model was not built for."""
    order = -20

    def __init__(self, kind: str, backwards: bool, vocab_sz: int):
        self.kind, self.backwards, self.vocab_sz = kind, backwards, vocab_sz

    def before_fit(self):
        meta = getattr(self.dls, "meta", None)
        if meta is None:
            return
        if meta["kind"] != self.kind:
            raise ValueError(f"this learner is a {self.kind} learner but the data are {meta['kind']} data")
        if meta["backwards"] != self.backwards:
            d = lambda b: "backward" if b else "forward"  # noqa: E731
            raise ValueError(f"the model is a {d(self.backwards)} model but the data are {d(meta['backwards'])}: "
                             "build both with the same `backwards` flag")
        if meta["vocab_sz"] != self.vocab_sz:
            raise ValueError(f"the model has {self.vocab_sz} tokens but the data's vocabulary has {meta['vocab_sz']}")


def _check_dls(dls, kind):
    if not isinstance(dls, ULMFiTDataLoaders):
        raise TypeError(f"expected ULMFiTDataLoaders (from lm_dataloaders / classifier_dataloaders), got {type(dls).__name__}")
    if dls.kind != kind:
        raise ValueError(f"expected {kind} data, got {dls.kind} data")


def ulmfit_lm_learner(dls: ULMFiTDataLoaders, config: AWDLSTMConfig | dict | None = None, pretrained=None,
                      drop_mult: float = 1.0, alpha: float = 2.0, beta: float = 1.0, opt_func=None,
                      wd: float = 0.01, fused_loss: bool = True, **kwargs) -> Learner:
    """A fastai ``Learner`` around our AWD-LSTM LM. Never downloads unless ``pretrained="wt103"``.

    ``pretrained``: ``None`` (random init), a folder in fastai's archive layout (one ``.pth`` +
    one ``itos`` file), a ``(weights, itos)`` pair, or ``"wt103"`` (fastai's WikiText-103
    weights, downloaded through fastai: needs network). The report of matched tokens is
    printed and kept as ``learn.pretrained_report``.

    ``fused_loss``: in training, decoder and cross-entropy are computed together in chunks
    (:func:`~ulmfit_callbacks.losses.linear_cross_entropy`), never storing the logits; the loss
    and gradients are the same. Validation and prediction return logits as usual. Turn it off
    for callbacks that read the training logits (e.g. training metrics).
    """
    _check_dls(dls, "lm")
    config = AWDLSTMConfig.from_dict(config) if isinstance(config, dict) else (config or AWDLSTMConfig())
    model = AWDLSTMLanguageModel(len(dls.vocab), config.scaled(drop_mult), backwards=dls.backwards)
    report = None
    if pretrained is not None:
        if isinstance(pretrained, str) and pretrained == "wt103":
            files = wt103_files(dls.backwards)
        elif isinstance(pretrained, (tuple, list)):
            files = tuple(pretrained)
        else:
            files = find_pretrained_files(pretrained)
        report = load_pretrained(model, files[0], files[1], dls.vocab)
        print(report)
    cbs = [ModelResetter(), ActivationRegularizer(alpha, beta), DataCheck("lm", dls.backwards, len(dls.vocab))]
    model.decoder.fused = fused_loss
    learn = Learner(dls, model, loss_func=LMLoss(), opt_func=opt_func or partial(Adam, mom=0.8, sqr_mom=0.99),
                    splitter=lm_splitter, metrics=[accuracy, Perplexity()], wd=wd,
                    cbs=cbs + list(kwargs.pop("cbs", [])), **kwargs)
    learn.pretrained_report = report
    return learn


def encoder_state_dict(model) -> dict[str, torch.Tensor]:
    """The AWD-LSTM encoder weights of an LM or classifier, keyed by parameter name."""
    enc = model.encoder.module if isinstance(model, ULMFiTClassifier) else model.encoder
    return {k: v.detach().clone() for k, v in enc.state_dict().items()}


def load_encoder(clf: ULMFiTClassifier, state: dict[str, torch.Tensor]):
    """Load encoder weights by parameter name, refusing other sizes with a clear message."""
    enc = clf.encoder.module
    own = enc.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state]
    if bad or missing:
        raise ValueError("the LM encoder does not fit this classifier: " + "; ".join(bad[:3] + [f"missing {missing[:3]}"] * bool(missing)))
    enc.load_state_dict(state)


def ulmfit_classifier_learner(dls: ULMFiTDataLoaders, config: AWDLSTMConfig | dict | None = None,
                              encoder=None, lm_meta: dict | None = None, drop_mult: float = 1.0,
                              bptt: int = 70, max_len: int = 1400, hidden: int = 50, head_ps=None,
                              opt_func=None, wd: float = 0.01, threshold: float = 0.5, **kwargs) -> Learner:
    """A fastai ``Learner`` around the ULMFiT classifier (BPT3C + concat pooling + head).

    ``encoder``: the fine-tuned LM's encoder weights (a state dict from :func:`encoder_state_dict`,
    an LM learner, or an LM model). With a learner or model, its vocabulary size and direction
    must match the data's; with a state dict pass ``lm_meta=dict(vocab_sz=..., backwards=...)``
    to have them checked. Multi-label data give a sigmoid/BCE learner with ``accuracy_multi``.
    """
    _check_dls(dls, "classifier")
    config = AWDLSTMConfig.from_dict(config) if isinstance(config, dict) else (config or AWDLSTMConfig())
    config = dataclasses.replace(config, **CLASSIFIER_DROPOUTS).scaled(drop_mult)
    if isinstance(encoder, Learner):
        lm_meta = dict(vocab_sz=len(encoder.dls.vocab), backwards=encoder.dls.backwards, itos=encoder.dls.vocab.itos)
        encoder = encoder.model
    if isinstance(encoder, torch.nn.Module):
        lm_meta = lm_meta or dict(vocab_sz=encoder.encoder.vocab_sz, backwards=getattr(encoder, "backwards", False))
        encoder = encoder_state_dict(encoder)
    if lm_meta is not None:
        if lm_meta.get("backwards", dls.backwards) != dls.backwards:
            raise ValueError(f"direction mismatch: the LM encoder is {'backward' if lm_meta['backwards'] else 'forward'} "
                             f"but the classifier data are {'backward' if dls.backwards else 'forward'}")
        if lm_meta.get("vocab_sz", len(dls.vocab)) != len(dls.vocab) or \
                ("itos" in lm_meta and lm_meta["itos"] != dls.vocab.itos):
            raise ValueError(f"vocabulary mismatch: the LM encoder has {lm_meta['vocab_sz']} tokens, the classifier data "
                             f"{len(dls.vocab)}; build the classifier data with the fine-tuned LM's vocab")
    n_out = len(dls.classes)
    enc = BPT3CEncoder(AWDLSTM(len(dls.vocab), config), bptt=bptt, max_len=max_len, pad_idx=config.pad_idx)
    head = PoolingClassifierHead(3 * config.emb_sz, n_out, hidden, head_ps or (config.output_p, 0.1))
    model = ULMFiTClassifier(enc, head, backwards=dls.backwards)
    if encoder is not None:
        load_encoder(model, encoder)
    if dls.multi_label:
        loss, metrics = BCEWithLogitsLossFlat(thresh=threshold), [partial(accuracy_multi, thresh=threshold)]
    else:
        loss, metrics = CrossEntropyLossFlat(), [accuracy]
    cbs = [DataCheck("classifier", dls.backwards, len(dls.vocab))]
    return Learner(dls, model, loss_func=loss, opt_func=opt_func or partial(Adam, mom=0.8, sqr_mom=0.99),
                   splitter=classifier_splitter, metrics=metrics, wd=wd, cbs=cbs + list(kwargs.pop("cbs", [])), **kwargs)

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

from .artifact import read_model_folder, resolve_model
from .loaders import ULMFiTDataLoaders
from .losses import LMLoss
from .memory import ReleaseMemory
from .models.awd_lstm import AWDLSTM, CLASSIFIER_DROPOUTS, AWDLSTMConfig, AWDLSTMLanguageModel
from .models.classifier import BPT3CEncoder, PoolingClassifierHead, ULMFiTClassifier
from .pretrained import find_pretrained_files, load_pretrained, wt103_files
from .regularization import ActivationRegularizer
from .splitters import classifier_splitter, lm_splitter

SIZE_KEYS = ("emb_sz", "n_hid", "n_layers", "pad_idx", "tie_weights", "out_bias", "arch")

__all__ = ["ulmfit_lm_learner", "ulmfit_classifier_learner", "DataCheck", "encoder_state_dict", "load_encoder", "read_pretrained"]


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


def read_pretrained(pretrained, backwards: bool):
    """``(weights, itos, meta)`` for any accepted ``pretrained=`` value (see :func:`ulmfit_lm_learner`),
    read once; ``meta`` is the model folder's config (``None`` for fastai's files). The triple is
    itself an accepted ``pretrained=`` value."""
    if isinstance(pretrained, str) and pretrained == "wt103":
        w, itos = wt103_files(backwards)
        return w, itos, None
    if isinstance(pretrained, (tuple, list)):
        if len(pretrained) not in (2, 3):
            raise ValueError("pretrained=(weights, itos) or (weights, itos, meta)")
        return pretrained[0], pretrained[1], (pretrained[2] if len(pretrained) == 3 else None)
    folder = resolve_model(pretrained, backwards)
    if not (folder / "config.json").exists():  # fastai's archive layout (one .pth + one itos file)
        w, itos = find_pretrained_files(folder)
        return w, itos, None
    meta, itos, state = read_model_folder(folder)
    if meta.get("kind") != "lm":
        raise ValueError(f"{folder} holds a {meta.get('kind')}, not a language model")
    if meta["backwards"] != backwards:
        d = lambda b: "backward" if b else "forward"  # noqa: E731
        raise ValueError(f"{folder} is a {d(meta['backwards'])} LM but the data are {d(backwards)}")
    return state, itos, dict(meta, source=str(folder))


def ulmfit_lm_learner(dls: ULMFiTDataLoaders, config: AWDLSTMConfig | dict | None = None, pretrained=None,
                      drop_mult: float = 1.0, alpha: float = 2.0, beta: float = 1.0, opt_func=None,
                      wd: float = 0.01, fused_loss: bool = True, loss_func=None, metrics=None, cbs=None,
                      **kwargs) -> Learner:
    """A fastai ``Learner`` around our AWD-LSTM LM. Never downloads unless asked to (``"wt103"``, a hub id).

    ``pretrained``: ``None`` (random init); ``"general"`` (the LM shipped with this package,
    see ``weights/MODEL_CARD.md``); a model folder saved by a stage (or its parent holding
    ``fwd``/``bwd``); a Hugging Face Hub id in that layout; a folder in fastai's archive
    layout (one ``.pth`` + one ``itos`` file); a ``(weights, itos)`` pair; or ``"wt103"``
    (fastai's WikiText-103 weights, downloaded through fastai). Embedding rows are matched by
    token into the data's vocabulary; the report is printed and kept as ``learn.pretrained_report``.
    With a model folder and no ``config``, the model takes the folder's sizes (and the
    paper's LM dropouts); a ``config`` of other sizes is refused.

    ``fused_loss``: in training, decoder and cross-entropy are computed together in chunks
    (:func:`~ulmfit_callbacks.losses.linear_cross_entropy`), never storing the logits; the loss
    and gradients are the same: the loss owns this (:meth:`~ulmfit_callbacks.losses.LMLoss.attach`).
    Validation and prediction return logits as usual. Turn it off for callbacks that read the
    training logits (e.g. training metrics); a ``loss_func`` of your own always gets logits.
    ``loss_func``, ``metrics`` and ``cbs`` are passed on to fastai's ``Learner`` (``metrics``
    defaults to accuracy and perplexity).
    """
    _check_dls(dls, "lm")
    config = AWDLSTMConfig.from_dict(config) if isinstance(config, dict) else config
    source = read_pretrained(pretrained, dls.backwards) if pretrained is not None else None
    if config is None:
        sizes = {k: v for k, v in (source[2] or {}).get("config", {}).items() if k in SIZE_KEYS} if source else {}
        config = dataclasses.replace(AWDLSTMConfig(), **sizes)
    model = AWDLSTMLanguageModel(len(dls.vocab), config.scaled(drop_mult), backwards=dls.backwards)
    report = None
    if source is not None:
        report = load_pretrained(model, source[0], source[1], dls.vocab)
        if source[2] is not None and "source" in source[2]:
            report.source = source[2]["source"]
        print(report)
    own = [ModelResetter(), ActivationRegularizer(alpha, beta), DataCheck("lm", dls.backwards, len(dls.vocab)),
           ReleaseMemory()]
    loss_func = loss_func or LMLoss()
    if fused_loss and isinstance(loss_func, LMLoss):
        loss_func.attach(model)
    learn = Learner(dls, model, loss_func=loss_func, opt_func=opt_func or partial(Adam, mom=0.8, sqr_mom=0.99),
                    splitter=lm_splitter, metrics=[accuracy, Perplexity()] if metrics is None else metrics, wd=wd,
                    cbs=own + list(cbs or []), **kwargs)
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
                              opt_func=None, wd: float = 0.01, threshold: float = 0.5, loss_func=None, metrics=None,
                              cbs=None, **kwargs) -> Learner:
    """A fastai ``Learner`` around the ULMFiT classifier (BPT3C + concat pooling + head).

    ``encoder``: the fine-tuned LM's encoder weights (a state dict from :func:`encoder_state_dict`,
    an LM learner, or an LM model). With a learner or model, its vocabulary size and direction
    must match the data's; with a state dict pass ``lm_meta=dict(vocab_sz=..., backwards=...)``
    to have them checked. Multi-label data give a sigmoid/BCE learner with ``accuracy_multi``.
    ``loss_func``, ``metrics`` and ``cbs`` are passed on to fastai's ``Learner`` (e.g.
    ``loss_func=CrossEntropyLossFlat(weight=class_weights)``, ``metrics=[accuracy, F1Score(average="macro")]``).
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
        loss, mets = BCEWithLogitsLossFlat(thresh=threshold), [partial(accuracy_multi, thresh=threshold)]
    else:
        loss, mets = CrossEntropyLossFlat(), [accuracy]
    own = [DataCheck("classifier", dls.backwards, len(dls.vocab)), ReleaseMemory()]
    return Learner(dls, model, loss_func=loss_func or loss, opt_func=opt_func or partial(Adam, mom=0.8, sqr_mom=0.99),
                   splitter=classifier_splitter, metrics=mets if metrics is None else metrics, wd=wd,
                   cbs=own + list(cbs or []), **kwargs)

"""The three ULMFiT stages as functions, with artifacts saved to folders.

One artifact folder per model (``lm_fwd``, ``clf_bwd``...): ``weights.pt`` (a state dict,
loaded with ``weights_only=True``), ``config.json`` (model config and data meta),
``vocab.json``, ``metrics.json`` and PNG plots. Every file is written atomically.
The CLI, the demo and the notebooks call these functions.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .averaging import ASGDWeightAveraging
from .checkpoint import atomic_save
from .data import Vocab, classifier_dataloaders, lm_dataloaders
from .learner import ulmfit_classifier_learner, ulmfit_lm_learner
from .models.awd_lstm import AWDLSTMConfig
from .schedule import DiscriminativeLR, SlantedTriangularLR
from .unfreezing import GradualUnfreezing

__all__ = ["Recipe", "pretrain_lm", "finetune_lm", "train_classifier", "save_artifact", "load_artifact",
           "load_classifier", "write_json"]


@dataclass
class Recipe:
    """Which ULMFiT behaviours a stage uses, and its budget. Defaults are the paper's."""
    epochs: int = 1
    lr: float = 0.01              # lr_max of STLR (or the constant / one-cycle lr without it)
    stlr: bool = True
    cut_frac: float = 0.1
    ratio: float = 32
    discriminative: bool = True
    decay: float = 2.6
    gradual_unfreezing: bool = True  # classifier only
    unfreeze_schedule: Sequence[int] | None = None
    asgd: bool = False
    nonmono: int = 5              # NT-ASGD trigger (used when asgd_start_epoch is None)
    asgd_start_epoch: int | None = None  # average from this epoch (0-based) on instead
    wd: float = 0.01
    drop_mult: float = 1.0        # multiplies every dropout of the stage's model (fastai's drop_mult)

    def callbacks(self, classifier: bool) -> list:
        cbs = []
        if self.stlr:
            cbs.append(SlantedTriangularLR(self.lr, self.cut_frac, self.ratio))
        if self.discriminative:
            cbs.append(DiscriminativeLR(self.decay))
        if classifier and self.gradual_unfreezing:
            cbs.append(GradualUnfreezing(self.unfreeze_schedule))
        if self.asgd:
            cbs.append(ASGDWeightAveraging(start_epoch=self.asgd_start_epoch, nonmono=self.nonmono))
        return cbs


_SIZE_KEYS = ("emb_sz", "n_hid", "n_layers", "pad_idx", "tie_weights", "out_bias", "arch")


def write_json(path: Path, obj):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=float), encoding="utf-8")
    os.replace(tmp, path)


def save_artifact(folder: str | os.PathLike, learn, kind: str, metrics: dict | None = None, plots=()):
    """Save weights (state dict), config + data meta, vocab and metrics of a trained learner."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save({k: v.detach().cpu() for k, v in learn.model.state_dict().items()}, folder / "weights.pt")
    model = learn.model
    cfg = model.config if kind == "lm" else model.encoder.module.config
    meta = dict(kind=kind, config=cfg.to_dict(), backwards=learn.dls.backwards, classes=learn.dls.classes,
                multi_label=learn.dls.multi_label)
    if kind == "classifier":
        enc = model.encoder
        head = model.head
        meta.update(bptt=enc.bptt, max_len=enc.max_len, hidden=head[2].out_features,
                    head_ps=[head[1].p, head[5].p])
    write_json(folder / "config.json", meta)
    learn.dls.vocab.save(folder / "vocab.json")
    if metrics is not None:
        write_json(folder / "metrics.json", metrics)
    for name, fig in plots:
        tmp = folder / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, folder / f"{name}.png")
        import matplotlib.pyplot as plt
        plt.close(fig)  # saved, not shown (notebooks would display every one)


def load_artifact(folder: str | os.PathLike) -> tuple[dict, Vocab, dict]:
    """``(meta, vocab, state_dict)`` of a saved model folder, with clear errors."""
    folder = Path(folder)
    for f in ("weights.pt", "config.json", "vocab.json"):
        if not (folder / f).exists():
            raise FileNotFoundError(f"{folder} is not a saved model: {f} is missing")
    meta = json.loads((folder / "config.json").read_text())
    state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
    return meta, Vocab.load(folder / "vocab.json"), state


def _fit(learn, recipe: Recipe, classifier: bool, extra=()):
    cbs = recipe.callbacks(classifier)
    if recipe.stlr:
        learn.fit(recipe.epochs, cbs=cbs + list(extra), wd=recipe.wd)
    else:
        learn.fit_one_cycle(recipe.epochs, recipe.lr, cbs=cbs + list(extra), wd=recipe.wd)
    return cbs


def _lr_plot(cbs):
    s = next((c for c in cbs if isinstance(c, SlantedTriangularLR)), None)
    return [("lr_per_group", s.plot())] if s is not None and s.lrs else []


def _lm_metrics(learn, seconds):
    vals = learn.recorder.values[-1]
    names = learn.recorder.metric_names[1:-1]
    m = dict(zip(names, map(float, vals)))
    return dict(valid_loss=m.get("valid_loss"), perplexity=m.get("perplexity"), accuracy=m.get("accuracy"),
                seconds=round(seconds, 1))


def pretrain_lm(train_texts, valid_texts, out: str | os.PathLike, config: AWDLSTMConfig, recipe: Recipe,
                backwards=False, bs=32, bptt=70, max_vocab=30000, min_freq=2, seed=42, tokens=None, cbs=()):
    """Stage 1: train an AWD-LSTM LM on a general-domain corpus (``cbs``: extra callbacks, e.g. ``BF16Autocast()``)."""
    torch.manual_seed(seed)
    dls = lm_dataloaders(train_texts, valid_texts, bs=bs, bptt=bptt, backwards=backwards, max_vocab=max_vocab,
                         min_freq=min_freq, seed=seed, tokens=tokens)
    learn = ulmfit_lm_learner(dls, config=config, drop_mult=recipe.drop_mult)
    t = time.time()
    recipe = dataclasses.replace(recipe, discriminative=False)  # stage 1 trains every layer alike
    used = _fit(learn, recipe, classifier=False, extra=cbs)
    metrics = _lm_metrics(learn, time.time() - t)
    save_artifact(out, learn, "lm", metrics, _lr_plot(used))
    return learn, metrics


def finetune_lm(train_texts, valid_texts, out: str | os.PathLike, recipe: Recipe, pretrained: str | os.PathLike | None = None,
                config: AWDLSTMConfig | None = None, backwards=False, bs=32, bptt=70, max_vocab=30000, min_freq=2,
                seed=42, tokens=None, cbs=(), keep_pretrained_vocab: bool = False):
    """Stage 2: fine-tune the LM on the target task's text (vocab from the target training text).

    ``pretrained``: a stage-1 artifact folder (rows remapped by token into the new vocabulary);
    its sizes are used, with the dropouts of ``config`` (default: the paper's LM dropouts)
    times ``recipe.drop_mult``, whatever dropouts stage 1 trained with.

    ``keep_pretrained_vocab``: the vocabulary is the task's (tokens seen ``min_freq`` times in its
    training text) followed by the stage-1 tokens it lacks, up to ``max_vocab``: words that are
    rare or absent in a small task's training text keep their pretrained embeddings instead of
    becoming ``xxunk``.
    """
    torch.manual_seed(seed)
    extra = load_artifact(pretrained)[1] if pretrained is not None and keep_pretrained_vocab else None
    dls = lm_dataloaders(train_texts, valid_texts, bs=bs, bptt=bptt, backwards=backwards, max_vocab=max_vocab,
                         min_freq=min_freq, seed=seed, tokens=tokens, extra_vocab=extra)
    files = None
    if pretrained is not None:
        meta, vocab, _ = load_artifact(pretrained)
        if meta["kind"] != "lm":
            raise ValueError(f"{pretrained} holds a {meta['kind']}, not a language model")
        if meta["backwards"] != backwards:
            raise ValueError(f"{pretrained} is a {'backward' if meta['backwards'] else 'forward'} LM; "
                             f"this stage is {'backward' if backwards else 'forward'}")
        sizes = {k: meta["config"][k] for k in _SIZE_KEYS if k in meta["config"]}
        config = dataclasses.replace(config or AWDLSTMConfig(), **sizes)
        files = (Path(pretrained) / "weights.pt", Path(pretrained) / "vocab.json")
    learn = ulmfit_lm_learner(dls, config=config, pretrained=files, drop_mult=recipe.drop_mult)
    t = time.time()
    used = _fit(learn, recipe, classifier=False, extra=cbs)
    metrics = _lm_metrics(learn, time.time() - t)
    if learn.pretrained_report is not None:
        metrics["pretrained_tokens_matched"] = learn.pretrained_report.matched
    save_artifact(out, learn, "lm", metrics, _lr_plot(used))
    return learn, metrics


def train_classifier(train_texts, train_labels, valid_texts, valid_labels, out: str | os.PathLike, recipe: Recipe,
                     lm: str | os.PathLike | None = None, config: AWDLSTMConfig | None = None, vocab: Vocab | None = None,
                     backwards=False, bs=32, max_tokens=None, multi_label=False, seed=42, classes=None, tokens=None,
                     cbs=()):
    """Stage 3: the classifier on top of the fine-tuned LM encoder (``lm``: a stage-2 artifact folder)."""
    torch.manual_seed(seed)
    encoder, lm_meta = None, None
    if lm is not None:
        meta, vocab, state = load_artifact(lm)
        if meta["kind"] != "lm":
            raise ValueError(f"{lm} holds a {meta['kind']}, not a language model")
        config = AWDLSTMConfig.from_dict(meta["config"])
        encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        lm_meta = dict(vocab_sz=len(vocab), backwards=meta["backwards"])
    if vocab is None:
        raise ValueError("train_classifier needs the fine-tuned LM (`lm`) or a vocabulary (`vocab`)")
    dls = classifier_dataloaders(train_texts, train_labels, vocab, valid_texts, valid_labels, bs=bs, backwards=backwards,
                                 multi_label=multi_label, seed=seed, max_tokens=max_tokens, classes=classes, tokens=tokens)
    learn = ulmfit_classifier_learner(dls, config=config, encoder=encoder, lm_meta=lm_meta, drop_mult=recipe.drop_mult)
    t = time.time()
    used = _fit(learn, recipe, classifier=True, extra=cbs)
    vals = dict(zip(learn.recorder.metric_names[1:-1], map(float, learn.recorder.values[-1])))
    metrics = dict(valid_loss=vals.get("valid_loss"), accuracy=vals.get("accuracy", vals.get("accuracy_multi")),
                   seconds=round(time.time() - t, 1))
    save_artifact(out, learn, "classifier", metrics, _lr_plot(used))
    return learn, metrics


def load_classifier(folder: str | os.PathLike):
    """A classifier learner (for prediction and evaluation) from a saved artifact folder."""
    from .data import ClassifierLoader, ULMFiTDataLoaders
    meta, vocab, state = load_artifact(folder)
    if meta["kind"] != "classifier":
        raise ValueError(f"{folder} holds a {meta['kind']}, not a classifier")
    y = np.zeros((0, len(meta["classes"])), np.float32) if meta["multi_label"] else np.zeros(0, np.int64)
    empty = ClassifierLoader([], y)
    dls = ULMFiTDataLoaders(empty, empty.new(), vocab=vocab, backwards=meta["backwards"], kind="classifier",
                            classes=meta["classes"], multi_label=meta["multi_label"])
    cfg = AWDLSTMConfig.from_dict(meta["config"])  # dropouts do not matter for inference
    learn = ulmfit_classifier_learner(dls, config=cfg, bptt=meta["bptt"], max_len=meta["max_len"],
                                      hidden=meta["hidden"], head_ps=tuple(meta["head_ps"]))
    learn.model.load_state_dict(state)
    learn.model.eval()
    return learn

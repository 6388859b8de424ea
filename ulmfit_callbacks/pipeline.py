"""The three ULMFiT stages as functions, with artifacts saved to folders.

One model folder per model (``lm_fwd``, ``clf_bwd``...) in the format of
:mod:`~ulmfit_callbacks.artifact` (safetensors weights, JSON config and vocabulary, a model
card), plus ``metrics.json``, ``history.csv`` and PNG plots.
The CLI, the demo and the notebooks call these functions.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .artifact import atomic_write, read_model_folder, save_model_folder, write_json
from .averaging import ASGDWeightAveraging
from .corpus import Corpus, as_corpus
from .learner import SIZE_KEYS, read_pretrained, ulmfit_classifier_learner, ulmfit_lm_learner
from .loaders import ClassifierLoader, ULMFiTDataLoaders, classifier_dataloaders, lm_dataloaders
from .models.awd_lstm import AWDLSTMConfig
from .schedule import DiscriminativeLR, SlantedTriangularLR
from .tokenizer import SpacyTokenizer, Tokenizer, tokenizer_from_dict
from .unfreezing import GradualUnfreezing
from .vocab import SPECIAL_TOKENS, Vocab

__all__ = ["PAPER_LM", "PAPER_CLASSIFIER", "PRETRAIN", "DEFAULT_LM", "DEFAULT_CLASSIFIER", "SCRATCH_CLASSIFIER",
           "FEW_LABELS_CLASSIFIER", "classifier_recipe",
           "Recipe", "pretrain_lm", "finetune_lm", "train_classifier", "save_artifact", "load_artifact",
           "load_classifier", "load_model", "write_json"]


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
    asgd_start_epoch: int | None = None  # average from this epoch (0-based; -2: the last two) on instead
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
            start = self.asgd_start_epoch
            start = max(self.epochs + start, 0) if start is not None and start < 0 else start
            cbs.append(ASGDWeightAveraging(start_epoch=start, nonmono=self.nonmono))
        return cbs


# The paper's recipes (WikiText-103 LM, GPU budgets) and ours: the ratio, averaging and dropouts
# chosen on MR's held-out split in an earlier session, the 6 classifier epochs on BBC's validation
# split with the shipped LM (benchmarks/RESULTS.md, "Defaults"). `ulmfit ... --paper` takes the paper's.
PAPER_LM = Recipe(epochs=1, lr=0.01, decay=2.6)
PAPER_CLASSIFIER = Recipe(epochs=4, lr=0.01, decay=2.6)
PRETRAIN = Recipe(epochs=3, lr=0.01, discriminative=False, drop_mult=0.2)
DEFAULT_LM = Recipe(epochs=3, lr=0.01, decay=2.6)
# ratio 1.0: chosen on MR's held-out split (a small stage-1 LM's embedding must still learn the task);
# gradual unfreezing over 3 epochs, then all layers; weights averaged over the last 2 epochs.
DEFAULT_CLASSIFIER = Recipe(epochs=6, lr=0.01, decay=1.0, unfreeze_schedule=(1, 2, 3), asgd=True, asgd_start_epoch=-2,
                            drop_mult=0.5)
# Few labels: 6 epochs at bs 32 are 20-190 optimizer steps for 100-1,000 labelled texts, too few.
# On TREC-6's held-out split (100 and 200 labels, 2 seeds; benchmarks/RESULTS.md, "Few labels"),
# 30 epochs at bs 16 with every layer trained from the start beat the default and gradual unfreezing;
# on the held-out splits of MR and TREC-6 at 500 and 1,000 labels it beats the default too ("Where the
# few-label recipe stops"); at 2,000 and 4,000 it no longer wins ("Between 1,000 labels and the full sets").
FEW_LABELS_CLASSIFIER = dataclasses.replace(DEFAULT_CLASSIFIER, epochs=30, gradual_unfreezing=False, unfreeze_schedule=None)
FEW_LABELS_BS, FEW_LABELS_MAX = 16, 1000  # its batch size; training texts up to which it is chosen


def classifier_recipe(n_train: int) -> tuple[Recipe, int, str]:
    """``(recipe, bs, reason)`` for a classifier trained on ``n_train`` labelled texts (from a pretrained LM)."""
    if n_train <= FEW_LABELS_MAX:
        return FEW_LABELS_CLASSIFIER, FEW_LABELS_BS, (
            f"{n_train} labelled training texts (<= {FEW_LABELS_MAX}): the few-label recipe, {FEW_LABELS_CLASSIFIER.epochs} "
            f"epochs at batch size {FEW_LABELS_BS} with every layer trained from the start (enough optimizer steps)")
    return DEFAULT_CLASSIFIER, 32, f"{n_train} labelled training texts: the default recipe"


# No stage-1 LM (random encoder): gradual unfreezing would train a head on random features and
# the discriminative ratio would starve the lower layers, so everything trains from the start.
SCRATCH_CLASSIFIER = dataclasses.replace(DEFAULT_CLASSIFIER, discriminative=False, gradual_unfreezing=False,
                                         unfreeze_schedule=None)


def save_artifact(folder: str | os.PathLike, learn, kind: str, metrics: dict | None = None, plots=(), **settings):
    """Save a trained learner as a model folder (:mod:`~ulmfit_callbacks.artifact`).

    ``settings``: further values prediction needs (e.g. ``max_tokens``), kept in ``config.json``.
    """
    folder = Path(folder)
    model = learn.model
    cfg = model.config if kind == "lm" else model.encoder.module.config
    tok = learn.dls.tokenizer
    meta = dict(kind=kind, config=cfg.to_dict(), backwards=learn.dls.backwards, classes=learn.dls.classes,
                multi_label=learn.dls.multi_label, tokenizer=tok.to_dict(), **settings)
    if kind == "classifier":
        enc, head = model.encoder, model.head
        meta.update(bptt=enc.bptt, max_len=enc.max_len, hidden=head.hidden, head_ps=list(head.ps))
    save_model_folder(folder, model.state_dict(), meta, learn.dls.vocab.itos, metrics)
    tok.save(folder)  # e.g. SentencePiece's spm.model: predictions tokenise as training did
    for name, fig in plots:
        atomic_write(folder / f"{name}.png", lambda f, fig=fig: fig.savefig(f, dpi=110, format="png"))
        import matplotlib.pyplot as plt
        plt.close(fig)  # saved, not shown (notebooks would display every one)


def load_artifact(folder: str | os.PathLike) -> tuple[dict, Vocab, dict]:
    """``(meta, vocab, state_dict)`` of a saved model folder, with clear errors."""
    meta, itos, state = read_model_folder(folder)
    return meta, Vocab(itos), state


def _fit(learn, recipe: Recipe, classifier: bool, extra=(), out: str | os.PathLike | None = None):
    """Fit with the recipe's callbacks; with ``out``, fastai's ``history.csv`` is written there as it goes."""
    from fastai.callback.progress import CSVLogger
    cbs = recipe.callbacks(classifier)
    log = [CSVLogger(fname=Path(out).resolve() / "history.csv")] if out is not None else []
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    with _epoch_lines(learn):
        if recipe.stlr:
            learn.fit(recipe.epochs, cbs=cbs + log + list(extra), wd=recipe.wd)
        else:
            learn.fit_one_cycle(recipe.epochs, recipe.lr, cbs=cbs + log + list(extra), wd=recipe.wd)
    return cbs


@contextlib.contextmanager
def _epoch_lines(learn):
    """Progress bars on a terminal; in a log file (no terminal) one plain line per epoch instead."""
    if sys.stdout.isatty():
        yield
        return
    old = learn.logger

    def line(vals):
        names = learn.recorder.metric_names  # set by the Recorder at the start of the fit
        cells = [f"{n} {v:.4f}" if isinstance(v, float) else f"{n} {v}" for n, v in zip(names, vals)]
        print("  " + "  ".join(cells), flush=True)
    learn.logger = line
    try:
        with learn.no_bar():
            yield
    finally:
        learn.logger = old


def _plots(learn, cbs):
    """The lr of every parameter group (STLR, Fig. 2 of the paper) and the training/validation loss."""
    import matplotlib.pyplot as plt
    out = []
    s = next((c for c in cbs if isinstance(c, SlantedTriangularLR)), None)
    if s is not None and s.lrs:
        out.append(("lr_per_group", s.plot()))
    rec = learn.recorder
    if len(rec.losses):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([float(x) for x in rec.losses], label="train (smoothed)")
        n_it = len(rec.losses) / max(len(rec.values), 1)
        ax.plot([n_it * (i + 1) for i in range(len(rec.values))], [v[1] for v in rec.values], "o-", label="valid")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        out.append(("loss", fig))
    return out


def _lm_metrics(learn, seconds):
    vals = learn.recorder.values[-1]
    names = learn.recorder.metric_names[1:-1]
    m = dict(zip(names, map(float, vals)))
    return dict(valid_loss=m.get("valid_loss"), perplexity=m.get("perplexity"), accuracy=m.get("accuracy"),
                seconds=round(seconds, 1))


def model_tokenizer(meta: dict | None, folder=None) -> Tokenizer:
    """The tokenizer a model folder's config names (fastai's spaCy rules for folders that name none)."""
    settings = (meta or {}).get("tokenizer")
    return tokenizer_from_dict(settings, folder) if settings else SpacyTokenizer()


def _task_corpus(data, meta: dict | None, folder, what: str) -> Corpus:
    """``data`` as a Corpus in the model's tokens: texts are tokenised by its tokenizer; a Corpus
    tokenised otherwise is refused."""
    try:
        return as_corpus(data, tokenizer=model_tokenizer(meta, folder) if meta is not None else None)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def pretrain_lm(train: Corpus, valid: Corpus | None, out: str | os.PathLike, config: AWDLSTMConfig, recipe: Recipe,
                backwards=False, bs=32, bptt=70, max_vocab=30000, min_freq=2, seed=42, cbs=(), device=None):
    """Stage 1: train an AWD-LSTM LM on a general-domain corpus (``cbs``: extra callbacks, e.g. ``BF16Autocast()``).

    ``valid``: ``None`` holds out 10% of ``train``. The corpus's tokenizer (e.g. SentencePiece,
    :mod:`~ulmfit_callbacks.tokenizer`) is saved with the LM, and stages 2 and 3 use it.
    """
    torch.manual_seed(seed)
    dls = lm_dataloaders(train, valid, bs=bs, bptt=bptt, backwards=backwards, max_vocab=max_vocab, min_freq=min_freq,
                         seed=seed, device=device)
    learn = ulmfit_lm_learner(dls, config=config, drop_mult=recipe.drop_mult)
    t = time.time()
    recipe = dataclasses.replace(recipe, discriminative=False)  # stage 1 trains every layer alike
    used = _fit(learn, recipe, classifier=False, extra=cbs, out=out)
    metrics = _lm_metrics(learn, time.time() - t)
    save_artifact(out, learn, "lm", metrics, _plots(learn, used))
    return learn, metrics


def finetune_lm(train: Corpus, valid: Corpus | None, out: str | os.PathLike, recipe: Recipe, pretrained="general",
                config: AWDLSTMConfig | None = None, backwards=False, bs=32, bptt=70, max_vocab=30000, min_freq=2,
                seed=42, cbs=(), keep_pretrained_vocab: bool = False, device=None):
    """Stage 2: fine-tune the LM on the target task's text (vocab from the target training text).

    ``valid``: ``None`` holds out 10% of ``train``. ``pretrained``: the stage-1 LM, by default
    ``"general"`` (shipped with the package); any value :func:`~ulmfit_callbacks.ulmfit_lm_learner`
    takes (a model folder, a hub id), or ``None`` for random weights; it is read once. Embedding
    rows are remapped by token into the new vocabulary; the stage-1 sizes are used, with the
    dropouts of ``config`` (default: the paper's LM dropouts) times ``recipe.drop_mult``,
    whatever dropouts stage 1 trained with.

    ``keep_pretrained_vocab``: the vocabulary is the task's (tokens seen ``min_freq`` times in its
    training text) followed by the stage-1 tokens it lacks, up to ``max_vocab``: words that are
    rare or absent in a small task's training text keep their pretrained embeddings instead of
    becoming ``xxunk``.
    """
    torch.manual_seed(seed)
    source = read_pretrained(pretrained, backwards) if pretrained is not None else None
    meta = source[2] if source is not None else None
    train = _task_corpus(train, meta, (meta or {}).get("source"), f"the pretrained LM {pretrained!r}")
    extra = Vocab(source[1]) if source is not None and keep_pretrained_vocab else None
    coverage = _token_coverage(train, source[1]) if source is not None else None
    dls = lm_dataloaders(train, valid, bs=bs, bptt=bptt, backwards=backwards, max_vocab=max_vocab, min_freq=min_freq,
                         seed=seed, extra_vocab=extra, device=device)
    if meta is not None and "config" in meta:
        sizes = {k: v for k, v in meta["config"].items() if k in SIZE_KEYS}
        config = dataclasses.replace(config or AWDLSTMConfig(), **sizes)
    learn = ulmfit_lm_learner(dls, config=config, pretrained=source, drop_mult=recipe.drop_mult)
    t = time.time()
    used = _fit(learn, recipe, classifier=False, extra=cbs, out=out)
    metrics = _lm_metrics(learn, time.time() - t)
    metrics["pretrained"] = None if source is None else str(pretrained)
    if learn.pretrained_report is not None:
        metrics["pretrained_tokens_matched"] = learn.pretrained_report.matched
    if coverage is not None:
        metrics["pretrained_token_coverage"] = coverage
    save_artifact(out, learn, "lm", metrics, _plots(learn, used))
    return learn, metrics


def _token_coverage(corpus: Corpus, itos: Sequence[str], low: float = 0.5) -> float:
    """Share of the corpus's word tokens (special tokens aside) that the pretrained vocabulary
    holds, printed; a warning when it is below ``low`` (text in another language or script)."""
    known, special = set(itos), set(SPECIAL_TOKENS)
    n = hit = 0
    for toks in corpus.tokens:
        for t in toks:
            if t not in special:
                n, hit = n + 1, hit + (t in known)
    cov = hit / max(n, 1)
    print(f"the pretrained LM's vocabulary holds {cov:.1%} of the {n:,} word tokens of the training text"
          + ("" if cov >= low else ": low. Is the text in the language the LM was trained on? (--pretrained none "
             "trains a new LM, with --lang or --tokenizer sentencepiece)"))
    return cov


def train_classifier(train: Corpus, valid: Corpus | None, out: str | os.PathLike, recipe: Recipe,
                     lm: str | os.PathLike | None = None, config: AWDLSTMConfig | None = None, vocab: Vocab | None = None,
                     backwards=False, bs=32, max_tokens=None, multi_label=False, seed=42, classes=None, cbs=(),
                     loss_func=None, device=None):
    """Stage 3: the classifier on top of the fine-tuned LM encoder (``lm``: a stage-2 model folder).

    ``train`` and ``valid`` are labelled corpora (``valid=None`` holds out 10% of ``train``).
    ``max_tokens`` (keep the first N tokens of each document) is saved with the model and used
    again by :func:`load_classifier`'s predictions. ``loss_func``: e.g. class-weighted cross-entropy.
    """
    torch.manual_seed(seed)
    encoder, lm_meta = None, None
    if lm is not None:
        meta, vocab, state = load_artifact(lm)
        if meta["kind"] != "lm":
            raise ValueError(f"{lm} holds a {meta['kind']}, not a language model")
        train = _task_corpus(train, meta, lm, f"the LM {lm}")
        config = AWDLSTMConfig.from_dict(meta["config"])
        encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        lm_meta = dict(vocab_sz=len(vocab), backwards=meta["backwards"])
    if vocab is None:
        raise ValueError("train_classifier needs the fine-tuned LM (`lm`) or a vocabulary (`vocab`)")
    dls = classifier_dataloaders(train, valid, vocab=vocab, bs=bs, backwards=backwards, multi_label=multi_label, seed=seed,
                                 max_tokens=max_tokens, classes=classes, device=device)
    learn = ulmfit_classifier_learner(dls, config=config, encoder=encoder, lm_meta=lm_meta, drop_mult=recipe.drop_mult,
                                      loss_func=loss_func)
    t = time.time()
    used = _fit(learn, recipe, classifier=True, extra=cbs, out=out)
    vals = dict(zip(learn.recorder.metric_names[1:-1], map(float, learn.recorder.values[-1])))
    metrics = dict(valid_loss=vals.get("valid_loss"), accuracy=vals.get("accuracy", vals.get("accuracy_multi")),
                   seconds=round(time.time() - t, 1))
    save_artifact(out, learn, "classifier", metrics, _plots(learn, used), max_tokens=max_tokens)
    learn.max_tokens = max_tokens
    return learn, metrics


def load_classifier(folder: str | os.PathLike, device=None):
    """A classifier learner (for prediction and evaluation) from a saved artifact folder."""
    meta, vocab, state = load_artifact(folder)
    if meta["kind"] != "classifier":
        raise ValueError(f"{folder} holds a {meta['kind']}, not a classifier")
    y = np.zeros((0, len(meta["classes"])), np.float32) if meta["multi_label"] else np.zeros(0, np.int64)
    empty = ClassifierLoader([], y)
    dls = ULMFiTDataLoaders(empty, empty.new(), vocab=vocab, backwards=meta["backwards"], kind="classifier",
                            classes=meta["classes"], multi_label=meta["multi_label"], device=device,
                            tokenizer=model_tokenizer(meta, folder))
    cfg = AWDLSTMConfig.from_dict(meta["config"])  # dropouts do not matter for inference
    learn = ulmfit_classifier_learner(dls, config=cfg, bptt=meta["bptt"], max_len=meta["max_len"],
                                      hidden=meta["hidden"], head_ps=tuple(meta["head_ps"]))
    learn.model.load_state_dict(state)
    learn.model.to(learn.dls.device).eval()
    learn.max_tokens = meta.get("max_tokens")
    return learn


def load_model(folder: str | os.PathLike, device=None):
    """A classifier folder -> its learner; a run folder holding ``clf_fwd`` and ``clf_bwd`` -> their
    :class:`~ulmfit_callbacks.ForwardBackwardEnsemble` (with only one of them: that learner)."""
    from .ensemble import ForwardBackwardEnsemble
    p = Path(folder)
    if (p / "config.json").exists() or (p / "weights.pt").exists():
        return load_classifier(p, device)
    fwd, bwd = p / "clf_fwd", p / "clf_bwd"
    if fwd.exists() and bwd.exists():
        return ForwardBackwardEnsemble(load_classifier(fwd, device), load_classifier(bwd, device))
    if fwd.exists() or bwd.exists():
        return load_classifier(fwd if fwd.exists() else bwd, device)
    raise FileNotFoundError(f"{folder} is neither a classifier folder nor a run folder with clf_fwd / clf_bwd")

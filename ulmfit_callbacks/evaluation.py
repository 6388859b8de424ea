"""Predictions a person can use, and metrics beyond accuracy.

- :func:`predict`: one call from a model (folder, learner or ensemble) and a DataFrame or list
  of texts to a DataFrame of predictions (:func:`predict_dataframe`'s columns).
- :func:`predict_dataframe`: every input column kept, in order, plus the predicted label, its
  probability and one probability column per class (multi-label: one 0/1 column per label at
  ``threshold`` and the probabilities). Empty texts get a prediction and ``empty_text=True``.
- :func:`classification_metrics`: accuracy, macro-F1 and per-class precision / recall / F1
  (single-label); per-label F1, micro/macro F1 and subset accuracy (multi-label).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .corpus import label_parts

__all__ = ["predict", "predict_probs", "predict_dataframe", "classification_metrics", "classification_report_text",
           "confusion_png"]


def predict_probs(model, data, chunk: int = 2000, log=None) -> tuple[np.ndarray, list[str], bool]:
    """``(probs, classes, multi_label)`` of a classifier learner or a forward+backward ensemble
    for a :class:`~ulmfit_callbacks.corpus.Corpus` or a list of texts.

    Texts are tokenised and predicted ``chunk`` at a time (memory stays flat on large files);
    ``log`` (e.g. ``print``) gets a progress line per chunk when there is more than one.
    """
    from .corpus import Corpus
    from .ensemble import ForwardBackwardEnsemble, predict_proba
    ens = model if isinstance(model, ForwardBackwardEnsemble) else None
    one = ens.forward if ens is not None else model
    out = []
    for i in range(0, len(data), chunk):
        part = data.subset(range(i, min(i + chunk, len(data)))) if isinstance(data, Corpus) else \
            Corpus.from_texts(data[i: i + chunk], tokenizer=one.dls.tokenizer)
        out.append((ens.predict_proba(part)["ensemble"] if ens is not None else predict_proba(model, part)).numpy())
        if log is not None and len(data) > chunk:
            log(f"  predicted {min(i + chunk, len(data)):,} / {len(data):,} texts")
    probs = np.concatenate(out) if out else np.zeros((0, len(one.dls.classes)))
    return probs, [str(c) for c in one.dls.classes], bool(one.dls.multi_label)


def predict(model, data: pd.DataFrame | Sequence[str], text_col: str = "text", threshold: float = 0.5, device=None,
            log=None) -> pd.DataFrame:
    """Predictions as a DataFrame: ``data``'s rows and columns (a list of texts becomes a ``text``
    column), in order, plus the predicted label, its probability and one column per class.

    ``model``: a classifier learner, a :class:`~ulmfit_callbacks.ForwardBackwardEnsemble`, or a
    folder (:func:`~ulmfit_callbacks.pipeline.load_model`: a run folder gives the ensemble).
    """
    if isinstance(model, (str, Path)):
        from .pipeline import load_model
        model = load_model(model, device)
    df = data if isinstance(data, pd.DataFrame) else pd.DataFrame({text_col: list(data)})
    if text_col not in df.columns:
        raise ValueError(f"no column {text_col!r}; columns are {list(df.columns)}")
    texts = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in df[text_col]]
    probs, classes, multi = predict_probs(model, texts, log=log)
    return predict_dataframe(df, probs, classes, text_col, multi, threshold)


def predict_dataframe(df: pd.DataFrame, probs: np.ndarray, classes: Sequence, text_col: str = "text",
                      multi_label: bool = False, threshold: float = 0.5) -> pd.DataFrame:
    """``df`` (unchanged, same rows and order) with prediction columns appended."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) != len(df):
        raise ValueError(f"{len(probs)} predictions for {len(df)} rows")
    out = df.copy()
    classes = [str(c) for c in classes]
    if multi_label:
        on = probs >= threshold
        out["predicted_labels"] = [";".join(c for c, o in zip(classes, row) if o) for row in on]
        for j, c in enumerate(classes):
            out[f"label_{c}"] = on[:, j].astype(int)
    else:
        best = probs.argmax(1)
        out["predicted_label"] = [classes[i] for i in best]
        out["probability"] = probs[np.arange(len(probs)), best].round(6)
    for j, c in enumerate(classes):
        out[f"prob_{c}"] = probs[:, j].round(6)
    out["empty_text"] = df[text_col].fillna("").astype(str).str.strip().eq("").to_numpy()
    return out


def classification_metrics(y_true, probs: np.ndarray, classes: Sequence, multi_label: bool = False,
                           threshold: float = 0.5) -> dict:
    """Metrics as plain values (JSON-ready). ``y_true``: labels (multi-label: lists or ``;``-joined)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
    classes = [str(c) for c in classes]
    probs = np.asarray(probs)
    if multi_label:
        idx = {c: j for j, c in enumerate(classes)}
        Y = np.zeros((len(y_true), len(classes)), dtype=int)
        for r, l in enumerate(y_true):
            for c in label_parts(l):
                if c not in idx:
                    raise ValueError(f"label {c!r} (row {r}) is not one of the model's classes {classes}")
                Y[r, idx[c]] = 1
        P = (probs >= threshold).astype(int)
        per = f1_score(Y, P, average=None, zero_division=0)
        return dict(n=len(Y), subset_accuracy=float(accuracy_score(Y, P)),
                    micro_f1=float(f1_score(Y, P, average="micro", zero_division=0)),
                    macro_f1=float(f1_score(Y, P, average="macro", zero_division=0)),
                    per_label_f1={c: float(f) for c, f in zip(classes, per)}, threshold=threshold)
    y = [str(l) for l in y_true]
    pred = [classes[i] for i in probs.argmax(1)]
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    return dict(n=len(y), accuracy=float(accuracy_score(y, pred)),
                macro_f1=float(f1_score(y, pred, labels=classes, average="macro", zero_division=0)),
                per_class={c: dict(precision=float(p[j]), recall=float(r[j]), f1=float(f[j]), support=int(s[j]))
                           for j, c in enumerate(classes)})


def classification_report_text(y_true, y_pred, classes) -> str:
    from sklearn.metrics import classification_report
    return classification_report([str(x) for x in y_true], [str(x) for x in y_pred],
                                 labels=[str(c) for c in classes], digits=3, zero_division=0)


def confusion_png(y_true, y_pred, classes, path: str | Path, title: str):
    """The confusion matrix (rows: true, columns: predicted) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .artifact import atomic_write
    classes = [str(c) for c in classes]
    idx = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(y_true, y_pred):
        cm[idx[str(t)], idx[str(p)]] += 1
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(classes), 1.2 + 0.75 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)

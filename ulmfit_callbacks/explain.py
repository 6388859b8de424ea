"""Per-token attributions for a trained ULMFiT classifier: which tokens drove a prediction.

Attributions are taken with respect to the *embedding output* :math:`x_i \\in \\mathbb{R}^d` of
each token (the input of the first recurrent layer), for the score :math:`F` of one class
(its softmax or sigmoid probability by default, or its logit). Methods:

- ``"ig"``, integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for
  Deep Networks"), from the all-zero embedding :math:`x'`, as an ``m``-step midpoint sum::

      IG_i = (x_i - x'_i) . (1/m) sum_{j=1..m} dF/dx_i (x' + (j - 1/2)/m (x - x'))

  Completeness: :math:`\\sum_i IG_i \\approx F(x) - F(x')` (exact as ``m`` grows); the
  :class:`Explanation` keeps both ends so the gap can be checked. The baseline is zero rather
  than the ``xxpad`` row, which is never trained (it keeps its random start, shrunk by weight decay).
- ``"attention"``, fastai v1's "intrinsic attention": :math:`\\lVert \\partial F / \\partial x_i \\rVert_1`,
  scaled so the largest is 1 (unsigned: how sensitive the score is to each token).
- ``"grad_input"``: gradient times input, :math:`x_i \\cdot \\partial F / \\partial x_i` (signed: the
  first-order Taylor estimate of the same :math:`F(x) - F(x')`).

The default, ``"ig"``, is the one whose top tokens move the prediction most when deleted
(:func:`faithfulness`, ``benchmarks/explain_faithfulness.py``): on TREC-6's held-out questions,
deleting the top 2 tokens drops the predicted class's probability by 0.65 (IG), 0.48
(grad x input), 0.36 (attention), against 0.14 for 2 random tokens.

The model runs in ``eval()`` mode (no dropout, BatchNorm's running statistics) and each document
is read in one piece: BPT3C's chunks carry the hidden state detached, so gradients would stop at
chunk borders, while the function itself is the same. Backward models see reversed ids; their
attributions are returned in the text's order. Works on any device the model is on.
"""
from __future__ import annotations

import contextlib
import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .vocab import SPECIAL_TOKENS, numericalize

__all__ = ["METHODS", "Explanation", "explain", "attributions", "top_losses", "faithfulness", "add_parser", "cmd_explain"]

METHODS = ("ig", "attention", "grad_input")
_NAMES = {"ig": "integrated gradients", "attention": "intrinsic attention (|gradient|)", "grad_input": "gradient x input"}
_MARKERS = {"xxmaj": lambda w: w[:1].upper() + w[1:], "xxup": str.upper}  # case markers: folded into the next word for display
_SPECIAL = set(SPECIAL_TOKENS)
TOKEN_BUDGET = 4096  # rows x tokens per batch: the size of one forward/backward pass


# --------------------------------------------------------------------------------------- result
@dataclass
class Explanation:
    """Attributions of one text: ``scores[i]`` belongs to ``tokens[i]`` (text order, both directions).

    ``label`` is the class explained (the predicted one unless asked otherwise); ``score`` and
    ``baseline_score`` are :math:`F(x)` and :math:`F(x')` of that class (``"ig"`` only), so that
    ``scores.sum() ≈ score - baseline_score``.
    """
    tokens: list[str]
    scores: np.ndarray
    predicted: str
    probability: float
    label: str
    label_probability: float
    method: str = "ig"
    score: float | None = None
    baseline_score: float | None = None

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` tokens with the highest scores (most in favour of ``label``), highest first."""
        order = np.argsort(-self.scores, kind="stable")[:n]
        return [(self.tokens[i], float(self.scores[i])) for i in order]

    def to_html(self, full: bool = False) -> str:
        """The text with each token's background green (for ``label``) or red (against), its opacity
        the score over the largest absolute score. fastai's case markers are folded into their word
        (``xxmaj paris`` shows as *Paris*, scores added); other special tokens show as grey tags.
        Every raw token and its score is in the hover title. ``full``: a standalone HTML page."""
        units = _display_units(self.tokens, self.scores)
        top = max((abs(u[1]) for u in units), default=0.0) or 1.0
        spans = []
        for text, s, title, special in units:
            a = 0.85 * min(1.0, abs(s) / top)
            rgb = "0,150,0" if s >= 0 else "210,0,0"
            cls = "tok sp" if special else "tok"
            spans.append(f'<span class="{cls}" title="{html.escape(title)}" style="background:rgba({rgb},{a:.3f})">'
                         f"{html.escape(text)}</span>")
        head = (f"<b>{html.escape(_NAMES.get(self.method, self.method))}</b> for <b>{html.escape(str(self.label))}</b> "
                f"(p={self.label_probability:.3f}); predicted <b>{html.escape(str(self.predicted))}</b> (p={self.probability:.3f})")
        if self.score is not None and self.baseline_score is not None:
            head += (f"; sum of scores {float(self.scores.sum()):+.4f}, F(x) - F(baseline) = "
                     f"{self.score - self.baseline_score:+.4f}")
        style = ("<style>.ulmfit-explanation .tok{padding:1px 2px;margin:1px;border-radius:3px;line-height:1.9}"
                 ".ulmfit-explanation .sp{font-size:75%;color:#666;font-family:monospace}</style>")
        body = (f'{style}<div class="ulmfit-explanation"><div style="font-size:85%;margin-bottom:4px">{head} '
                f'<span style="background:rgba(0,150,0,.6)">&nbsp;for&nbsp;</span> '
                f'<span style="background:rgba(210,0,0,.6)">&nbsp;against&nbsp;</span></div>'
                f'<div>{" ".join(spans)}</div></div>')
        if not full:
            return body
        return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(str(self.label))}: '
                f"{html.escape(self.method)}</title></head><body>{body}</body></html>\n")

    def _repr_html_(self) -> str:
        return self.to_html()

    def save_html(self, path: str | Path) -> Path:
        """Write :meth:`to_html` as a standalone page."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(full=True), encoding="utf-8")
        return path


def _display_units(tokens: Sequence[str], scores: np.ndarray) -> list[tuple[str, float, str, bool]]:
    """``(shown text, score, title, special)``: a case marker and its word become one unit (scores added)."""
    out, i = [], 0
    while i < len(tokens):
        t, s = tokens[i], float(scores[i])
        if t in _MARKERS and i + 1 < len(tokens) and tokens[i + 1] not in _SPECIAL:
            w, sw = tokens[i + 1], float(scores[i + 1])
            out.append((_MARKERS[t](w), s + sw, f"{t} {w}: {s + sw:+.4f} ({t} {s:+.4f}, {w} {sw:+.4f})", False))
            i += 2
            continue
        out.append((t, s, f"{t}: {s:+.4f}", t in _SPECIAL))
        i += 1
    return out


# ---------------------------------------------------------------------------------- model access
def _site(model) -> torch.nn.Module:
    """The module whose output is the embedding layer's output: the AWD-LSTM's input dropout."""
    enc = getattr(getattr(model, "encoder", None), "module", None)
    if enc is None or not hasattr(enc, "input_dp"):
        raise TypeError("explanations need a ULMFiT classifier (BPT3CEncoder over an AWD-LSTM with `input_dp`)")
    return enc.input_dp


@contextlib.contextmanager
def _whole_documents(model, hook=None):
    """Eval mode, each document read in one BPT3C chunk with gradients everywhere, an optional
    forward hook on the embedding output, and cuDNN off (its RNN has no backward in eval mode)."""
    enc, was = model.encoder, model.training
    saved = enc.bptt, enc.max_len
    enc.bptt = enc.max_len = 2 ** 62
    handle = _site(model).register_forward_hook(hook) if hook is not None else None
    model.eval()
    try:
        with torch.backends.cudnn.flags(enabled=False):
            yield
    finally:
        if handle is not None:
            handle.remove()
        enc.bptt, enc.max_len = saved
        model.train(was)


def _batches(lengths: Sequence[int], budget: int = TOKEN_BUDGET) -> Iterator[list[int]]:
    """Indices sorted longest first, in groups of at most ``budget`` rows x tokens (at least one row)."""
    order = np.argsort(-np.asarray(lengths), kind="stable").tolist()
    i = 0
    while i < len(order):
        n = max(1, budget // max(1, int(lengths[order[i]])))
        yield order[i: i + n]
        i += n


def _pad(docs: Sequence[np.ndarray], pad_idx: int, device) -> Tensor:
    x = torch.full((len(docs), max(len(d) for d in docs)), pad_idx, dtype=torch.long)
    for r, d in enumerate(docs):
        x[r, : len(d)] = torch.as_tensor(d)
    return x.to(device)


def _outputs(learn, logits: Tensor) -> Tensor:
    return torch.sigmoid(logits) if getattr(learn.dls, "multi_label", False) else logits.softmax(-1)


def _prepare(learn, items) -> list[list[str]]:
    """Token lists (each cut to the model's ``max_tokens``) from texts, token lists or a corpus (``.tokens``)."""
    if hasattr(items, "tokens"):
        items = items.tokens
    items = list(items)
    toks = _tokenize(learn, items) if items and isinstance(items[0], str) else [list(t) for t in items]
    mt = getattr(learn, "max_tokens", None)
    toks = [t[:mt] for t in toks] if mt else toks
    if any(len(t) == 0 for t in toks):
        raise ValueError("a text has no tokens")
    return toks


def _tokenize(learn, texts: list[str]) -> list[list[str]]:
    """Tokens made as the model's were: by its data's tokenizer (saved with the model)."""
    return [list(t) for t in learn.dls.tokenizer(texts)]


def _ids(learn, toks: Sequence[Sequence[str]]) -> list[np.ndarray]:
    return numericalize(toks, learn.dls.vocab, learn.dls.backwards)


@torch.no_grad()
def _predict(learn, ids: Sequence[np.ndarray]) -> np.ndarray:
    """Probabilities ``(n, n_classes)`` in input order (the model's usual chunked forward)."""
    model = learn.model
    dev, pad, was = next(model.parameters()).device, model.encoder.pad_idx, model.training
    model.eval()
    out = [None] * len(ids)
    try:
        for b in _batches([len(d) for d in ids]):
            p = _outputs(learn, model(_pad([ids[i] for i in b], pad, dev)).float()).cpu().numpy()
            for r, i in enumerate(b):
                out[i] = p[r]
    finally:
        model.train(was)
    return np.stack(out)


def _class_index(learn, target) -> int:
    classes = list(learn.dls.classes)
    if target in classes:
        return classes.index(target)
    names = [str(c) for c in classes]
    if str(target) in names:
        return names.index(str(target))
    if isinstance(target, (int, np.integer)) and 0 <= int(target) < len(classes):
        return int(target)
    raise ValueError(f"unknown class {target!r}; the classes are {classes}")


# ----------------------------------------------------------------------------------- attribution
def attributions(learn, ids: Sequence[np.ndarray], targets: Sequence[int], method: str = "ig", steps: int = 64,
                 score: str = "prob", ends: bool = False, budget: int = TOKEN_BUDGET):
    """Attributions of many documents at once: a list of arrays, one score per id (model order).

    ``ids``: numericalised documents as the model reads them; ``targets``: the class index of each.
    ``ends`` (``"ig"``): also return ``(F(x), F(x'))`` arrays. Rows of all documents (``steps`` per
    document for ``"ig"``) are batched up to ``budget`` rows x tokens.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if score not in ("prob", "logit"):
        raise ValueError(f"score must be 'prob' or 'logit', got {score!r}")
    if method == "ig" and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    model = learn.model
    dev, pad = next(model.parameters()).device, model.encoder.pad_idx
    if any((np.asarray(d) == pad).any() for d in ids):  # BPT3C would move it like padding: positions would shift
        raise ValueError("a document holds the padding token: remove it before explaining")
    # rows: (document, alpha, weight); weight 0 rows only record F (the two ends of the IG path)
    if method == "ig":
        rows = [(d, (j + 0.5) / steps, 1.0 / steps) for d in range(len(ids)) for j in range(steps)]
        rows += [(d, a, 0.0) for d in range(len(ids)) for a in (1.0, 0.0)] if ends else []
    else:
        rows = [(d, 1.0, 1.0) for d in range(len(ids))]
    attr = [np.zeros(len(d)) for d in ids]
    f_end = {}
    grab: list[tuple[Tensor, Tensor]] = []
    alpha = torch.zeros(0)

    def hook(module, inputs, out):  # the embedding output, replaced by a leaf on the IG path
        e = out.detach()
        z = (alpha.to(e.dtype)[:, None, None] * e).requires_grad_()
        grab.append((e, z))
        return z

    with _whole_documents(model, hook), torch.enable_grad():
        for b in _batches([len(ids[d]) for d, _, _ in rows], budget):
            grab.clear()
            alpha = torch.tensor([rows[r][1] for r in b], device=dev)
            tgt = torch.tensor([targets[rows[r][0]] for r in b], device=dev)
            logits = model(_pad([ids[rows[r][0]] for r in b], pad, dev)).float()
            f = (logits if score == "logit" else _outputs(learn, logits)).gather(1, tgt[:, None])[:, 0]
            if len(grab) != 1:
                raise RuntimeError(f"expected one embedding call per forward, got {len(grab)}")
            e, z = grab[0]
            (g,) = torch.autograd.grad(f.sum(), z)
            if method == "attention":
                per = g.abs().sum(-1)
            else:  # (x - x') . grad, with x' = 0
                per = (e * g).sum(-1)
            per, fv = per.float().cpu().numpy(), f.detach().cpu().numpy()
            for r, row in enumerate(b):
                d, a, w = rows[row]
                attr[d] += w * per[r, : len(ids[d])]
                if w == 0.0:
                    f_end[(d, a)] = float(fv[r])
    if method == "attention":
        attr = [a / a.max() if a.max() > 0 else a for a in attr]
    if ends:
        return attr, np.array([f_end.get((d, 1.0), np.nan) for d in range(len(ids))]), \
            np.array([f_end.get((d, 0.0), np.nan) for d in range(len(ids))])
    return attr


def _explain_many(learn, toks, targets=None, method="ig", steps=64, score="prob", ends=False):
    """``(probs, predicted, explained, scores in text order[, F(x), F(x')])`` for token lists."""
    ids = _ids(learn, toks)
    probs = _predict(learn, ids)
    pred = probs.argmax(1)
    tgt = pred if targets is None else np.asarray(targets)
    res = attributions(learn, ids, tgt.tolist(), method, steps, score, ends=ends)
    attr = res[0] if ends else res
    if learn.dls.backwards:
        attr = [a[::-1].copy() for a in attr]
    return (probs, pred, tgt, attr) + (tuple(res[1:]) if ends else ())


def explain(learn, text_or_tokens: str | Sequence[str], target=None, method: str = "ig", steps: int = 64,
            score: str = "prob") -> Explanation:
    """Per-token attributions of one text (a string, or its fastai tokens) for the predicted class.

    ``target``: explain this class instead (a class name or index; for a multi-label model, the
    label to explain, by default the most probable one). ``method``: ``"ig"`` (integrated
    gradients, ``steps`` midpoints), ``"attention"`` or ``"grad_input"`` (module docstring).
    ``score``: attribute the class probability (``"prob"``) or its logit (``"logit"``).
    The text is cut to the model's ``max_tokens`` as predictions are.
    """
    toks = _prepare(learn, [text_or_tokens] if isinstance(text_or_tokens, str) else [list(text_or_tokens)])
    tgt = None if target is None else [_class_index(learn, target)]
    probs, pred, tgt, attr, *fx = _explain_many(learn, toks, tgt, method, steps, score, ends=method == "ig")
    classes = list(learn.dls.classes)
    p, c, t = probs[0], int(pred[0]), int(tgt[0])
    return Explanation(toks[0], attr[0], classes[c], float(p[c]), classes[t], float(p[t]), method,
                       *(float(f[0]) for f in fx))


# ---------------------------------------------------------------------------------- evaluation
def top_losses(learn, texts, labels: Sequence, k: int = 10, explain: str | None = None, n_tokens: int = 5,
               steps: int = 32) -> pd.DataFrame:
    """The ``k`` texts the classifier gets most wrong: columns ``text``, ``label``, ``predicted``,
    ``probability`` (of the true label) and ``loss`` (cross-entropy), highest loss first; the
    index is the texts' position. ``explain`` (a method name): also ``top_tokens`` (the
    ``n_tokens`` tokens most in favour of the *predicted* class) and ``html``. Single-label models.
    """
    if getattr(learn.dls, "multi_label", False):
        raise ValueError("top_losses is for single-label classifiers")
    toks = _prepare(learn, texts)
    raw = list(texts.texts) if getattr(texts, "texts", None) is not None else \
        [t if isinstance(t, str) else " ".join(t) for t in (texts.tokens if hasattr(texts, "tokens") else texts)]
    labels = list(labels)
    if len(labels) != len(toks):
        raise ValueError(f"{len(toks)} texts but {len(labels)} labels")
    y = np.array([_class_index(learn, l) for l in labels])
    probs = _predict(learn, _ids(learn, toks))
    p_true = probs[np.arange(len(y)), y]
    classes = list(learn.dls.classes)
    df = pd.DataFrame({"text": raw, "label": [classes[i] for i in y], "predicted": [classes[i] for i in probs.argmax(1)],
                       "probability": p_true, "loss": -np.log(np.clip(p_true, 1e-12, None))})
    df = df.sort_values("loss", ascending=False, kind="stable").head(k)
    if explain is not None:
        idx = df.index.tolist()
        pr, pred, tgt, attr = _explain_many(learn, [toks[i] for i in idx], None, explain, steps)
        exps = [Explanation(toks[i], a, classes[c], float(p[c]), classes[c], float(p[c]), explain)
                for i, a, c, p in zip(idx, attr, pred, pr)]
        df["top_tokens"] = [", ".join(f"{t} ({s:+.3f})" for t, s in e.top(n_tokens)) for e in exps]
        df["html"] = [e.to_html() for e in exps]
    return df


def faithfulness(learn, texts, k: int = 3, n_random: int = 5, method: str = "ig", steps: int = 32, seed: int = 0) -> dict:
    """Deletion test of the attributions: does removing the top-``k`` tokens hurt the prediction
    more than removing ``k`` random ones?

    For each text (``xxbos`` is never removed; texts with at most ``k`` other tokens are skipped),
    the ``k`` tokens with the highest attribution to the predicted class are deleted, and
    separately ``n_random`` random sets of ``k``. The drop is :math:`p_c(x) - p_c(x \\setminus S)`
    for the predicted class ``c``. Returns the mean drop of each, the fraction of texts where the
    top-``k`` drop beats the mean random drop, and counts. The random sets depend only on
    ``seed`` and the texts, so two methods are compared on the same draws.
    """
    t0 = time.time()
    toks = _prepare(learn, texts)
    probs, pred, _, attr = _explain_many(learn, toks, None, method, steps)
    rng = np.random.default_rng(seed)
    variants, owner = [], []
    for i, (t, a) in enumerate(zip(toks, attr)):
        cand = np.array([j for j, tok in enumerate(t) if tok != "xxbos"])
        if len(cand) <= k:
            continue
        sets = [cand[np.argsort(-a[cand], kind="stable")[:k]]] + [rng.choice(cand, k, replace=False) for _ in range(n_random)]
        for s in sets:
            gone = set(s.tolist())
            variants.append([tok for j, tok in enumerate(t) if j not in gone])
        owner.append(i)
    if not owner:
        raise ValueError(f"no text has more than k={k} tokens besides xxbos")
    p_del = _predict(learn, _ids(learn, variants)).reshape(len(owner), 1 + n_random, -1)
    own = np.array(owner)
    c = pred[own]
    drops = probs[own, c][:, None] - p_del[np.arange(len(own)), :, c]
    top, rand = drops[:, 0], drops[:, 1:].mean(1)
    return dict(method=method, k=k, n_random=n_random, steps=steps if method == "ig" else None, n=len(own),
                n_skipped=len(toks) - len(own), topk_drop=float(top.mean()), random_drop=float(rand.mean()),
                frac_topk_gt_random=float((top > rand).mean()), seconds=round(time.time() - t0, 1))


# ------------------------------------------------------------------------------------------ CLI
def add_parser(subparsers):
    """Register ``ulmfit explain`` on an argparse sub-parsers object."""
    p = subparsers.add_parser("explain", help="which tokens drove a classifier's prediction (integrated gradients), "
                              "printed and as highlighted HTML")
    p.add_argument("text", help="the text to explain")
    p.add_argument("--model", required=True, help="classifier folder, or run folder with clf_fwd (else clf_bwd)")
    p.add_argument("--html", help="write the text with highlighted tokens to this HTML file")
    p.add_argument("--method", choices=METHODS, default="ig", help="ig: integrated gradients; attention: fastai v1's "
                   "intrinsic attention; grad_input: gradient x input (default: ig)")
    p.add_argument("--target", help="explain this class (multi-label: this label) instead of the predicted one")
    p.add_argument("--steps", type=int, default=64, help="integrated gradients: path steps (default: 64)")
    p.add_argument("--top", type=int, default=10, help="print the N most influential tokens (default: 10)")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=cmd_explain)
    return p


def _classifier_folder(model: str) -> Path:
    p = Path(model)
    if (p / "config.json").exists():
        return p
    for name in ("clf_fwd", "clf_bwd"):
        if (p / name / "config.json").exists():
            return p / name
    raise FileNotFoundError(f"{model} is neither a classifier folder nor a run folder with clf_fwd / clf_bwd")


def cmd_explain(a) -> Explanation:
    from fastai.torch_core import default_device

    from .pipeline import load_classifier
    folder = _classifier_folder(a.model)
    learn = load_classifier(folder, default_device() if a.device == "auto" else torch.device(a.device))
    ex = explain(learn, a.text, target=a.target, method=a.method, steps=a.steps)
    print(f"{folder}: predicted {ex.predicted} (p={ex.probability:.3f}); {_NAMES[ex.method]} for {ex.label} "
          f"(p={ex.label_probability:.3f})")
    if ex.score is not None:
        print(f"sum of scores {ex.scores.sum():+.4f}; F(x) - F(baseline) = {ex.score - ex.baseline_score:+.4f}")
    for tok, s in ex.top(a.top):
        print(f"  {s:+.4f}  {tok}")
    if a.html:
        print(f"wrote {ex.save_html(a.html)}")
    return ex

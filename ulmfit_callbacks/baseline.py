"""The linear baseline every result is shown beside: TF-IDF of word 1-2 grams + logistic regression.

A strong, five-second model on topic-like tasks; if ULMFiT does not beat it on a data set, a
user should know. Same text, same split, no tuning on test data (``C = 10`` throughout).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["TfidfBaseline"]


class TfidfBaseline:
    """``TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)`` + ``LogisticRegression(C=10)``.

    >>> b = TfidfBaseline().fit(["a good film", "a bad film", "good fun", "bad acting"] * 3, ["p", "n", "p", "n"] * 3)
    >>> b.predict(["good film"])
    ['p']
    """

    def __init__(self, C: float = 10.0, ngram_range=(1, 2), min_df: int = 2, max_iter: int = 2000):
        self.C, self.ngram_range, self.min_df, self.max_iter = C, ngram_range, min_df, max_iter
        self.model = None

    def fit(self, texts: Sequence[str], labels: Sequence) -> "TfidfBaseline":
        try:
            from sklearn.feature_extraction.text import TfidfVectorizer
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import make_pipeline
        except ImportError:
            raise ModuleNotFoundError("the TF-IDF baseline needs scikit-learn: `pip install scikit-learn`") from None
        min_df = self.min_df if len(texts) >= 20 else 1
        self.model = make_pipeline(TfidfVectorizer(ngram_range=self.ngram_range, sublinear_tf=True, min_df=min_df),
                                   LogisticRegression(C=self.C, max_iter=self.max_iter))
        self.model.fit([str(t) for t in texts], [str(l) for l in labels])
        return self

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.model.classes_]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("fit the baseline first")
        return self.model.predict_proba([str(t) for t in texts])

    def predict(self, texts: Sequence[str]) -> list[str]:
        p = self.predict_proba(texts)
        return [self.classes[i] for i in p.argmax(1)]

    def accuracy(self, texts: Sequence[str], labels: Sequence) -> float:
        return float(np.mean([p == str(l) for p, l in zip(self.predict(texts), labels)]))

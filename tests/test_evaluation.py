"""Predictions next to the user's columns, and metrics beyond accuracy (single- and multi-label)."""
import numpy as np
import pandas as pd
import pytest

from ulmfit_callbacks.baseline import TfidfBaseline
from ulmfit_callbacks.evaluation import classification_metrics, confusion_png, predict_dataframe


def test_predictions_keep_rows_and_columns_single_label():
    df = pd.DataFrame({"id": [3, 1, 2], "text": ["good", "", "bad"], "extra": ["x", "y", "z"]})
    p = np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1]])
    out = predict_dataframe(df, p, ["neg", "pos"])
    assert out[["id", "text", "extra"]].equals(df) and list(out.index) == [0, 1, 2]
    assert out.predicted_label.tolist() == ["pos", "neg", "neg"] and out.probability.tolist() == [0.8, 0.6, 0.9]
    assert out.prob_pos.tolist() == [0.8, 0.4, 0.1] and out.empty_text.tolist() == [False, True, False]
    with pytest.raises(ValueError, match="2 predictions for 3 rows"):
        predict_dataframe(df, p[:2], ["neg", "pos"])


def test_multi_label_predictions_and_metrics():
    df = pd.DataFrame({"text": ["a", "b", "c"]})
    p = np.array([[0.9, 0.7, 0.1], [0.2, 0.6, 0.4], [0.1, 0.2, 0.3]])
    out = predict_dataframe(df, p, ["x", "y", "z"], multi_label=True, threshold=0.5)
    assert out.predicted_labels.tolist() == ["x;y", "y", ""] and out.label_x.tolist() == [1, 0, 0]
    m = classification_metrics(["x;y", "y;z", ""], p, ["x", "y", "z"], multi_label=True)
    assert m["subset_accuracy"] == pytest.approx(2 / 3)  # rows 1 and 3 exact, row 2 misses z
    assert m["per_label_f1"] == {"x": 1.0, "y": 1.0, "z": 0.0} and m["micro_f1"] == pytest.approx(6 / 7)
    assert classification_metrics(["x; y;", "y ;z", ";"], p, ["x", "y", "z"], multi_label=True) == m  # spaces, empty parts
    with pytest.raises(ValueError, match="'w' .*not one of the model's classes"):  # not silently dropped
        classification_metrics(["x;w", "y", ""], p, ["x", "y", "z"], multi_label=True)


def test_single_label_metrics_and_confusion_png(tmp_path):
    y = ["a", "a", "b", "b"]
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    m = classification_metrics(y, p, ["a", "b"])
    assert m["accuracy"] == 0.75 and m["per_class"]["a"] == dict(precision=1.0, recall=0.5, f1=pytest.approx(2 / 3), support=2)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    confusion_png(y, ["a", "b", "b", "b"], ["a", "b"], tmp_path / "cm.png", "t")
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"


def test_tfidf_baseline_learns_a_separable_task():
    texts = [f"goal match striker {i}" for i in range(20)] + [f"shares bank profit {i}" for i in range(20)]
    labels = ["sport"] * 20 + ["business"] * 20
    b = TfidfBaseline().fit(texts, labels)
    assert b.accuracy(["the striker scored a goal", "bank shares fell"], ["sport", "business"]) == 1.0
    assert b.classes == ["business", "sport"] and b.predict_proba(["goal"]).shape == (1, 2)

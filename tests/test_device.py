"""Where batches and models go: fastai's default_device() unless told, the same through every factory and stage."""
import pytest
import torch

import ulmfit_callbacks.data as data_mod
from ulmfit_callbacks import AWDLSTMConfig, classifier_dataloaders, lm_dataloaders, ulmfit_classifier_learner, ulmfit_lm_learner
from ulmfit_callbacks.cli import build_parser
from ulmfit_callbacks.pipeline import Recipe, finetune_lm, load_classifier, train_classifier

SENTINEL = torch.device("cpu", 0)  # a CPU device that compares unequal to torch.device("cpu")


@pytest.fixture
def sentinel_default(monkeypatch):
    monkeypatch.setattr(data_mod, "default_device", lambda: SENTINEL)


def test_factories_and_stages_follow_fastais_default_device(sentinel_default, task_tokens, tmp_path):
    small = AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2)
    lm = lm_dataloaders(None, tokens=task_tokens, bs=4, bptt=8)
    assert lm.device == SENTINEL and lm.train.device == SENTINEL and lm.valid.device == SENTINEL
    assert ulmfit_lm_learner(lm, config=small).dls.device == SENTINEL
    labels = ["a", "b"] * 300
    clf = classifier_dataloaders(None, labels, vocab=lm.vocab, valid_labels=["a", "b"] * 50, tokens=task_tokens, bs=8)
    assert clf.device == SENTINEL and ulmfit_classifier_learner(clf, config=small).dls.device == SENTINEL
    x, _ = clf.one_batch()
    assert x.device.type == "cpu"
    learn, _ = finetune_lm(None, None, tmp_path / "lm", Recipe(epochs=1), pretrained=None, config=small, bs=4, bptt=8,
                           tokens=(task_tokens[0][:100], task_tokens[1][:20]))
    assert learn.dls.device == SENTINEL
    learn, _ = train_classifier(None, labels[:100], None, labels[:20], tmp_path / "clf", Recipe(epochs=1), lm=tmp_path / "lm",
                                tokens=(task_tokens[0][:100], task_tokens[1][:20]))
    assert learn.dls.device == SENTINEL and load_classifier(tmp_path / "clf").dls.device == SENTINEL
    assert load_classifier(tmp_path / "clf", device="cpu").dls.device == torch.device("cpu")


def test_an_explicit_device_wins(sentinel_default, task_tokens):
    lm = lm_dataloaders(None, tokens=task_tokens, bs=4, bptt=8, device="cpu")
    assert lm.device == torch.device("cpu") and lm.train.device == torch.device("cpu")


def test_cli_device_flag(sentinel_default, capsys):
    from ulmfit_callbacks.cli import _setup
    a = build_parser().parse_args(["evaluate", "x.csv", "--model", "m", "--device", "cpu", "--precision", "fp32"])
    device, cbs = _setup(a)
    assert device == torch.device("cpu") and cbs == []
    assert "device cpu" in capsys.readouterr().out
    a = build_parser().parse_args(["evaluate", "x.csv", "--model", "m"])  # auto: fastai's default
    assert _setup(a)[0] == SENTINEL

"""Where batches and models go: fastai's default_device() unless told, the same through every factory and stage."""
import fastai.torch_core
import pytest
import torch

import ulmfit_callbacks.loaders as loaders_mod
from ulmfit_callbacks import AWDLSTMConfig, classifier_dataloaders, lm_dataloaders, ulmfit_classifier_learner, ulmfit_lm_learner
from ulmfit_callbacks.cli import build_parser
from ulmfit_callbacks.pipeline import Recipe, finetune_lm, load_classifier, train_classifier

SENTINEL = torch.device("cpu", 0)  # a CPU device that compares unequal to torch.device("cpu")


@pytest.fixture
def sentinel_default(monkeypatch):
    monkeypatch.setattr(loaders_mod, "default_device", lambda: SENTINEL)
    monkeypatch.setattr(fastai.torch_core, "default_device", lambda: SENTINEL)  # what the CLI's --device auto asks


def test_factories_and_stages_follow_fastais_default_device(sentinel_default, task_corpus, tmp_path):
    small = AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2)
    lm = lm_dataloaders(*task_corpus, bs=4, bptt=8)
    assert lm.device == SENTINEL and lm.train.device == SENTINEL and lm.valid.device == SENTINEL
    assert ulmfit_lm_learner(lm, config=small).dls.device == SENTINEL
    clf = classifier_dataloaders(*task_corpus, vocab=lm.vocab, bs=8)
    assert clf.device == SENTINEL and ulmfit_classifier_learner(clf, config=small).dls.device == SENTINEL
    x, _ = clf.one_batch()
    assert x.device.type == "cpu"
    small_task = (task_corpus[0][:100], task_corpus[1][:20])
    learn, _ = finetune_lm(*small_task, tmp_path / "lm", Recipe(epochs=1), pretrained=None, config=small, bs=4, bptt=8)
    assert learn.dls.device == SENTINEL
    learn, _ = train_classifier(*small_task, tmp_path / "clf", Recipe(epochs=1), lm=tmp_path / "lm")
    assert learn.dls.device == SENTINEL and load_classifier(tmp_path / "clf").dls.device == SENTINEL
    assert load_classifier(tmp_path / "clf", device="cpu").dls.device == torch.device("cpu")


def test_an_explicit_device_wins(sentinel_default, task_corpus):
    lm = lm_dataloaders(*task_corpus, bs=4, bptt=8, device="cpu")
    assert lm.device == torch.device("cpu") and lm.train.device == torch.device("cpu")


def test_cli_device_flag(sentinel_default, capsys):
    from ulmfit_callbacks.cli import _setup
    a = build_parser().parse_args(["evaluate", "x.csv", "--model", "m", "--device", "cpu", "--precision", "fp32"])
    device, cbs = _setup(a)
    assert device == torch.device("cpu") and cbs == []
    assert "device cpu" in capsys.readouterr().out
    a = build_parser().parse_args(["evaluate", "x.csv", "--model", "m"])  # auto: fastai's default
    assert _setup(a)[0] == SENTINEL


def test_gpu_check_script_runs_on_cpu(tmp_path):
    """The one script a GPU session runs (benchmarks/gpu_check.py) works, in its CPU smoke mode."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, ULMFIT_BENCH_RESULTS=str(tmp_path))
    r = subprocess.run([sys.executable, str(repo / "benchmarks" / "gpu_check.py"), "--device", "cpu"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_check_cpu.json").read_text())["result"]
    assert {c["status"] for c in res["checks"].values()} <= {"PASS", "SKIP"}
    assert res["checks"]["prediction pass"]["status"] == "PASS"
    assert set(res["throughput"]) == {"fp32", "bf16"} and all(v["tok_s"]["ours"]["train"] > 0 for v in res["throughput"].values())

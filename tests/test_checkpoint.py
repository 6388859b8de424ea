"""Checkpoints: weights-only, atomic under a killed writer, clear errors for foreign or truncated files."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ulmfit_callbacks import SlantedTriangularLR, ulmfit_lm_learner
from ulmfit_callbacks.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint


def test_round_trip_with_callback_state(lm_dls, tiny_config, tmp_path):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    s = SlantedTriangularLR(0.01)
    learn.add_cb(s)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)
    save_checkpoint(learn, tmp_path / "ck.pt")
    torch.load(tmp_path / "ck.pt", weights_only=True)  # nothing but tensors and plain values
    fresh = ulmfit_lm_learner(lm_dls, config=tiny_config)
    s2 = SlantedTriangularLR(0.05)
    fresh.add_cb(s2)
    meta = load_checkpoint(fresh, tmp_path / "ck.pt")
    assert meta["itos"] == lm_dls.vocab.itos and meta["config"]["emb_sz"] == tiny_config.emb_sz
    assert s2.t == s.t == len(lm_dls.train) and s2.lrs == s.lrs
    for a, b in zip(learn.model.state_dict().values(), fresh.model.state_dict().values()):
        assert torch.equal(a, b)
    for p in learn.opt.param_lists[0]:
        q = fresh.opt.param_lists[0][[id(x) for x in learn.opt.param_lists[0]].index(id(p))]
        assert torch.equal(learn.opt.state[p]["grad_avg"], fresh.opt.state[q]["grad_avg"])


def test_foreign_truncated_and_mismatched_files(lm_dls, tiny_config, tmp_path):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a ulmfit_callbacks checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    save_checkpoint(learn, tmp_path / "ck.pt")
    data = (tmp_path / "ck.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "junk.pt")
    from ulmfit_callbacks import AWDLSTMConfig
    bigger = ulmfit_lm_learner(lm_dls, config=AWDLSTMConfig(emb_sz=8, n_hid=24, n_layers=3))
    with pytest.raises(CheckpointError, match="do not fit this model"):
        load_checkpoint(bigger, tmp_path / "ck.pt")


WRITER = r"""
import sys, torch
from ulmfit_callbacks.checkpoint import atomic_save
big = {"w": torch.randn(64, 1024, 1024)}   # 256 MB: the save takes a while
print("saving", flush=True)
atomic_save(big, sys.argv[1])
"""


def test_killed_writer_leaves_previous_checkpoint_intact(lm_dls, tiny_config, tmp_path):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    path = tmp_path / "ck.pt"
    save_checkpoint(learn, path)
    before = path.read_bytes()
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "saving"
    deadline = time.time() + 30
    while not any(f.name.startswith(".ck.pt.tmp") for f in tmp_path.iterdir()) and time.time() < deadline:
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert path.read_bytes() == before  # the old checkpoint, whole
    read_checkpoint(path)


def test_random_states_round_trip_cuda_included(lm_dls, tiny_config, tmp_path, monkeypatch):
    """torch (CPU and, faked here, two CUDA devices), numpy and Python generators come back as saved;
    CUDA states are restored only where CUDA is available, on the devices that exist."""
    import random

    import numpy as np
    cuda_states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5, 6], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in cuda_states])
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    learn.create_opt()
    save_checkpoint(learn, tmp_path / "ck.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    restored = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((device, s)))
    load_checkpoint(learn, tmp_path / "ck.pt")
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    assert len(restored) == 1 and restored[0][0] == 0 and torch.equal(restored[0][1], cuda_states[0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine reading a GPU checkpoint
    load_checkpoint(learn, tmp_path / "ck.pt")
    assert len(restored) == 1


def test_a_data_parallel_model_is_saved_plain(lm_dls, tiny_config, tmp_path):
    learn = ulmfit_lm_learner(lm_dls, config=tiny_config)
    learn.create_opt()
    learn.model = torch.nn.DataParallel(learn.model)  # as inside distributed training: the model wrapped
    save_checkpoint(learn, tmp_path / "ck.pt")
    state = read_checkpoint(tmp_path / "ck.pt")
    assert not any(k.startswith("module.") for k in state["model"]) and state["meta"]["config"]["emb_sz"] == tiny_config.emb_sz
    fresh = ulmfit_lm_learner(lm_dls, config=tiny_config)
    load_checkpoint(fresh, tmp_path / "ck.pt")
    for a, b in zip(learn.model.module.state_dict().values(), fresh.model.state_dict().values()):
        assert torch.equal(a, b)

"""Resident memory stays flat over many LM batches of varying length (issue: growth of MBs per batch).

The set-up of a real stage-1 run where it matters: a 30k vocabulary (the fused loss's block
buffers are bs x bptt x 30k), the paper's variable BPTT, bf16 where the CPU has it. Without
``ReleaseMemory`` glibc keeps the freed blocks and RSS climbs by 5-8 MiB per batch.
"""
import os

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback, CancelFitException

from ulmfit_callbacks import AWDLSTMConfig, BF16Autocast, LMLoader, SlantedTriangularLR, ULMFiTDataLoaders, ulmfit_lm_learner
from ulmfit_callbacks.cli import cpu_has_bf16
from ulmfit_callbacks.memory import ReleaseMemory, release_memory, rss_mib
from ulmfit_callbacks.vocab import SPECIAL_TOKENS, Vocab

N_BATCHES = 200
VARIABLE = True
SIZES = dict(emb_sz=200, n_hid=400, n_layers=3)  # the shipped LM's


def rss_per_batch(release: bool) -> list[float]:
    V = 30000
    rng = np.random.default_rng(0)
    docs = [rng.zipf(1.2, size=300).clip(9, V - 1) for _ in range(1600)]
    vocab = Vocab(SPECIAL_TOKENS + [f"w{i}" for i in range(V - len(SPECIAL_TOKENS))])
    dls = ULMFiTDataLoaders(LMLoader(docs, bs=32, bptt=70, shuffle=True, seed=0, variable_bptt=VARIABLE), LMLoader(docs[:20], bs=32, bptt=70),
                            vocab=vocab, kind="lm", device="cpu")
    torch.manual_seed(0)
    learn = ulmfit_lm_learner(dls, config=AWDLSTMConfig(**SIZES), drop_mult=0.2)
    if not release:
        learn.remove_cbs([c for c in learn.cbs if isinstance(c, ReleaseMemory)])
    rss = []

    class Sample(Callback):
        order = 99

        def after_batch(self):
            if self.training:
                rss.append(rss_mib())
                if len(rss) >= N_BATCHES:
                    raise CancelFitException
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, cbs=[Sample(), SlantedTriangularLR(1e-2)] + ([BF16Autocast()] if cpu_has_bf16() else []))
    return rss


def growth_kib_per_batch(rss, start=100):
    y = np.asarray(rss[start:])
    return float(np.polyfit(np.arange(len(y)), y, 1)[0] * 1024)


@pytest.mark.slow
@pytest.mark.skipif(not release_memory(), reason="malloc_trim is glibc's")
def test_lm_training_memory_is_flat_per_batch():
    rss = rss_per_batch(release=os.environ.get("ULMFIT_TEST_NO_RELEASE") != "1")
    g = growth_kib_per_batch(rss)
    # Measured on this set-up: without ReleaseMemory 5-8 MiB per batch; with it about 80 KiB, which
    # is the kernels of BPTT lengths not seen before (0-10 KiB with a fixed length) and levels off
    # over an epoch (benchmarks/memory_over_epoch.py: a whole stage-1 epoch).
    assert g < 250, f"RSS grew {g:.0f} KiB per batch after batch 100 (from {rss[100]:.0f} to {rss[-1]:.0f} MiB)"

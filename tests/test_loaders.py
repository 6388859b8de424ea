"""Loaders: contiguous LM streams, the paper's variable BPTT, direction, padding, batches, label checks."""
import numpy as np
import pytest
import torch

from ulmfit_callbacks import ClassifierLoader, Corpus, LMLoader, Vocab, classifier_dataloaders, lm_dataloaders
from ulmfit_callbacks.corpus import split_train_valid
from ulmfit_callbacks.vocab import SPECIAL_TOKENS


def test_lm_batches_are_contiguous_shifted_streams():
    docs = [np.arange(100, 100 + n) for n in (30, 41, 29)]
    dl = LMLoader(docs, bs=2, bptt=7, shuffle=False)
    xs, ys = zip(*dl)
    assert len(xs) == len(dl)
    x, y = torch.cat(xs, 1), torch.cat(ys, 1)
    stream = torch.from_numpy(np.concatenate(docs))
    L = len(stream) // 2
    for r in range(2):
        torch.testing.assert_close(x[r], stream[r * L: r * L + x.shape[1]])
        torch.testing.assert_close(y[r], stream[r * L + 1: r * L + 1 + x.shape[1]])
    assert all(t.shape[1] == 7 for t in xs[:-1]) and type(xs[0]) is torch.Tensor


def test_variable_bptt_draws_the_papers_distribution():
    dl = LMLoader([np.arange(400_000) % 1000], bs=4, bptt=70, shuffle=True, seed=0)
    assert dl.variable_bptt
    lens = np.array([x.shape[1] for x, _ in dl])
    assert len(lens) == len(dl)
    assert lens.min() >= 5 and lens.max() <= 110
    long = lens[lens > 52]
    assert abs(long.mean() - 70) < 0.5 and abs(long.std() - 5) < 0.5
    assert 0.03 < (lens <= 52).mean() < 0.07  # N(bptt/2, 5) with p = 0.05
    assert dl.last_seq_len == lens[-1]


def test_backwards_reverses_every_document():
    toks = [["xxbos", "a", "b", "c"], ["xxbos", "d", "e"]] * 10
    fwd = lm_dataloaders(Corpus(toks), Corpus(toks[:4]), bs=1, bptt=100, min_freq=1, variable_bptt=False)
    bwd = lm_dataloaders(Corpus(toks), Corpus(toks[:4]), bs=1, bptt=100, min_freq=1, variable_bptt=False,
                         vocab=fwd.vocab, backwards=True)
    f = [fwd.vocab.itos[i] for i in fwd.valid.docs[0]]
    b = [fwd.vocab.itos[i] for i in bwd.valid.docs[0]]
    assert f == ["xxbos", "a", "b", "c"] and b == ["c", "b", "a", "xxbos"]
    assert bwd.backwards and not fwd.backwards


def test_classifier_loader_pads_and_reorders():
    docs = [np.arange(n) + 10 for n in (3, 9, 5, 7)]
    dls = classifier_dataloaders(Corpus.from_texts(["a b c", "d e", "f", "g h i", "j", "k l"], ["x", "y", "x", "y", "x", "y"]),
                                 vocab=Vocab(SPECIAL_TOKENS + list("abcdefghijkl")), valid_pct=0.34, bs=2)
    dl = dls.valid.new(docs=docs, labels=[0, 1, 0, 1], bs=3)
    (x1, y1), (x2, y2) = list(dl)
    assert x1.shape == (3, 9) and (x1[:, :3] != 1).all() and x1[0, 8] != 1 and (x1[-1, 5:] == 1).all()
    assert dl.get_idxs() == [1, 3, 2, 0]


def test_a_one_row_last_batch_is_dropped_in_training_only():
    docs = [np.array([5, 6])] * 9
    tr = ClassifierLoader(docs, np.zeros(9, dtype=np.int64), bs=4, shuffle=True, seed=0)
    assert tr.drop_last and len(tr) == 2 and [len(y) for _, y in tr] == [4, 4]
    va = ClassifierLoader(docs, np.zeros(9, dtype=np.int64), bs=4, shuffle=False)
    assert not va.drop_last and [len(y) for _, y in va] == [4, 4, 1]
    two = ClassifierLoader(docs[:6], np.zeros(6, dtype=np.int64), bs=4, shuffle=True, seed=0)
    assert not two.drop_last and [len(y) for _, y in two] == [4, 2]


def test_label_errors():
    vocab = Vocab(SPECIAL_TOKENS + ["a"])
    with pytest.raises(ValueError, match="at least two classes"):
        classifier_dataloaders(Corpus.from_texts(["a", "a a", "a"], ["x", "x", "x"]), vocab=vocab, valid_pct=0.34)
    with pytest.raises(ValueError, match=r"validation labels \['z'\] never occur"):
        classifier_dataloaders(Corpus.from_texts(["a", "a a"], ["x", "y"]), Corpus.from_texts(["a"], ["z"]), vocab=vocab)
    dls = classifier_dataloaders(Corpus.from_texts(["a", "a a", "a"], ["x;y", "y", "x"]), Corpus.from_texts(["a"], ["y;x"]),
                                 vocab=vocab, multi_label=True)
    assert dls.classes == ["x", "y"] and dls.valid.labels.tolist() == [[1.0, 1.0]]
    # a trailing separator or a space after it (hand-made multi-label files) makes no class of its own
    dls = classifier_dataloaders(Corpus.from_texts(["a", "a a", "a"], ["x; y;", " y", "x;"]),
                                 Corpus.from_texts(["a"], ["y ; x"]), vocab=vocab, multi_label=True)
    assert dls.classes == ["x", "y"] and dls.train.labels.tolist() == [[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]
    assert dls.valid.labels.tolist() == [[1.0, 1.0]]


def test_the_validation_split_keeps_every_class_in_training():
    vocab = Vocab(SPECIAL_TOKENS + ["a"])
    texts, labels = ["a"] * 20, ["x"] * 9 + ["y"] * 10 + ["rare"]
    seed = next(s for s in range(200) if 19 in split_train_valid(20, 0.1, s)[1])  # a plain random split: "rare" in valid
    said = []
    tr, va = Corpus.from_texts(texts, labels).split(0.1, seed=seed, log=said.append)
    assert "rare" in tr.labels and "rare" not in va.labels and len(tr) + len(va) == 20 and len(va) == 1
    assert said and "1 row(s) moved to training" in said[0] and "'rare'" in said[0]
    dls = classifier_dataloaders(Corpus.from_texts(texts, labels), vocab=vocab, seed=seed)  # used to fail
    assert "rare" in dls.classes
    # multi-label: a row moves only when one of its own classes has no training row
    ml = ["x;y"] * 10 + ["x;z"]
    s = next(s for s in range(200) if 10 in split_train_valid(11, 0.2, s)[1])
    tr, va = Corpus.from_texts(["a"] * 11, ml).split(0.2, seed=s, label_delim=";", log=None)
    assert "x;z" in tr.labels and va.labels == ["x;y"]  # 2 validation rows, the x;z one moved
    with pytest.raises(ValueError, match="too few to split off"):
        Corpus.from_texts(["a", "a"], ["x", "y"]).split(0.5, seed=0, log=None)

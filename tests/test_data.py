"""Text data: vocabulary, loaders, direction, variable BPTT, BBC News, bad input."""
import numpy as np
import pandas as pd
import pytest
import torch

from ulmfit_callbacks import (
    ClassifierLoader,
    LMLoader,
    Vocab,
    classifier_dataloaders,
    lm_dataloaders,
    load_bbc_news,
    tokenize,
)
from ulmfit_callbacks.data import SPECIAL_TOKENS, read_folder, read_texts


def test_vocab_from_training_rows_only_and_json_round_trip(tmp_path):
    train = [["xxbos", "a", "b", "a"], ["xxbos", "b", "c"]]
    valid = [["xxbos", "zzz", "zzz", "zzz"]]
    dls = lm_dataloaders(None, tokens=(train * 20, valid * 20), bs=2, bptt=3, min_freq=1)
    assert "zzz" not in dls.vocab.stoi
    assert dls.vocab.itos[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert dls.vocab.itos[len(SPECIAL_TOKENS):] == ["a", "b", "c"]
    dls.vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == dls.vocab
    assert list(dls.vocab.numericalize(["a", "nope"])) == [9, 0]


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
    fwd = lm_dataloaders(None, tokens=(toks, toks[:4]), bs=1, bptt=100, min_freq=1, variable_bptt=False)
    bwd = lm_dataloaders(None, tokens=(toks, toks[:4]), bs=1, bptt=100, min_freq=1, variable_bptt=False,
                         vocab=fwd.vocab, backwards=True)
    f = [fwd.vocab.itos[i] for i in fwd.valid.docs[0]]
    b = [fwd.vocab.itos[i] for i in bwd.valid.docs[0]]
    assert f == ["xxbos", "a", "b", "c"] and b == ["c", "b", "a", "xxbos"]
    assert bwd.backwards and not fwd.backwards


def test_classifier_loader_pads_and_reorders():
    docs = [np.arange(n) + 10 for n in (3, 9, 5, 7)]
    dls = classifier_dataloaders(["a b c", "d e", "f", "g h i", "j", "k l"], ["x", "y", "x", "y", "x", "y"],
                                 vocab=Vocab(SPECIAL_TOKENS + list("abcdefghijkl")), valid_pct=0.34, bs=2)
    dl = dls.valid.new(docs=docs, labels=[0, 1, 0, 1], bs=3)
    (x1, y1), (x2, y2) = list(dl)
    assert x1.shape == (3, 9) and (x1[:, :3] != 1).all() and x1[0, 8] != 1 and (x1[-1, 5:] == 1).all()
    assert dl.get_idxs() == [1, 3, 2, 0]


def test_bbc_news_loads_with_the_bad_file_reported(capsys):
    df = load_bbc_news()
    assert len(df) == 2225 and df.label.nunique() == 5
    assert df.attrs["bad_files"] == ["sports/199.txt"]
    assert "sports/199.txt" in capsys.readouterr().out
    bad = df.loc[df.file == "sports/199.txt", "text"].item()
    assert "\ufffd" in bad and len(bad) > 100


def test_non_utf8_file_in_folder(tmp_path):
    for cls, content in [("pos", "good film".encode()), ("neg", b"bad \xff\xfe film")]:
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "1.txt").write_bytes(content)
    texts, labels, files, bad = read_folder(tmp_path)
    assert labels == ["neg", "pos"] and [f.name for f in bad] == ["1.txt"] and bad[0].parent.name == "neg"
    assert texts[0] == "bad \ufffd\ufffd film"


@pytest.mark.parametrize("df, msg", [
    (pd.DataFrame({"text": [], "label": []}), "no rows"),
    (pd.DataFrame({"txt": ["a"], "label": ["x"]}), "no column 'text'"),
    (pd.DataFrame({"text": ["a"], "lbl": ["x"]}), "no column 'label'"),
    (pd.DataFrame({"text": ["  ", None], "label": ["x", "y"]}), "no row has a text and a label"),
])
def test_bad_frames(df, msg):
    with pytest.raises(ValueError, match=msg):
        read_texts(df, "text", "label")


def test_literal_words_are_text_and_blank_rows_are_skipped_with_a_message(tmp_path):
    words = ["None", "NA", "N/A", "n/a", "null", "nan", "NULL", "#N/A"]
    rows = [f"{w},{'yes' if i % 2 else 'no'}" for i, w in enumerate(words)]
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(rows + ['"   ",yes', ",no", "kept,", "fine,NA"]) + "\n")
    said = []
    texts, labels = read_texts(tmp_path / "d.csv", "text", "label", log=said.append)
    assert texts == words + ["fine"] and labels[-1] == "NA"  # a label that reads NA is a label
    assert said == [f"{tmp_path / 'd.csv'}: skipped 2 row(s) with empty or whitespace-only text (rows [8, 9])",
                    f"{tmp_path / 'd.csv'}: skipped 1 row(s) with missing label (rows [10])"]
    all_rows, _ = read_texts(tmp_path / "d.csv", "text", "label", skip_empty=False)
    assert len(all_rows) == 12 and all_rows[8:11] == ["   ", "", "kept"]  # evaluation keeps every row, in order


def test_a_one_row_last_batch_is_dropped_in_training_only():
    docs = [np.array([5, 6])] * 9
    tr = ClassifierLoader(docs, np.zeros(9, dtype=np.int64), bs=4, shuffle=True, seed=0)
    assert tr.drop_last and len(tr) == 2 and [len(y) for _, y in tr] == [4, 4]
    va = ClassifierLoader(docs, np.zeros(9, dtype=np.int64), bs=4, shuffle=False)
    assert not va.drop_last and [len(y) for _, y in va] == [4, 4, 1]
    two = ClassifierLoader(docs[:6], np.zeros(6, dtype=np.int64), bs=4, shuffle=True, seed=0)
    assert not two.drop_last and [len(y) for _, y in two] == [4, 2]


def test_texts_over_spacys_limit_are_tokenised_in_pieces():
    n = 120_000
    text = " ".join(f"Word{i}" for i in range(n))  # about 1.2 M characters
    assert len(text) > 1_000_000
    toks = tokenize([text, "Short one."])
    assert toks[0].count("xxbos") == 1 and toks[0][:3] == ["xxbos", "xxmaj", "word0"]
    assert toks[0].count("xxmaj") == n  # no word lost or doubled at the cuts
    assert toks[1] == tokenize(["Short one."])[0]


def test_bad_csvs(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_texts(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError):
        read_texts(tmp_path / "missing.csv")


def test_label_errors():
    vocab = Vocab(SPECIAL_TOKENS + ["a"])
    with pytest.raises(ValueError, match="at least two classes"):
        classifier_dataloaders(["a", "a a", "a"], ["x", "x", "x"], vocab=vocab, valid_pct=0.34)
    with pytest.raises(ValueError, match=r"validation labels \['z'\] never occur"):
        classifier_dataloaders(["a", "a a"], ["x", "y"], vocab=vocab, valid_texts=["a"], valid_labels=["z"])
    dls = classifier_dataloaders(["a", "a a", "a"], ["x;y", "y", "x"], vocab=vocab, valid_texts=["a"],
                                 valid_labels=["y;x"], multi_label=True)
    assert dls.classes == ["x", "y"] and dls.valid.labels.tolist() == [[1.0, 1.0]]


def test_malformed_csv(tmp_path):
    (tmp_path / "bad.csv").write_text("text,label\na,b\nc,d,e,f\n")
    with pytest.raises(ValueError, match="not a readable CSV"):
        read_texts(tmp_path / "bad.csv")


def test_vocab_extended_keeps_task_ids_and_appends_pretrained_tokens(task_tokens):
    task = Vocab.build(task_tokens[0], max_vocab=100, min_freq=2)
    other = Vocab(task.itos[:9] + ["zebra", task.itos[12], "aardvark"])
    ext = task.extended(other, max_vocab=1000)
    assert ext.itos[: len(task)] == task.itos
    assert ext.itos[len(task):] == ["zebra", "aardvark"]
    assert len(task.extended(other, max_vocab=len(task) + 1)) == len(task) + 1
    dls = lm_dataloaders(None, tokens=task_tokens, bs=4, bptt=5, max_vocab=5000, extra_vocab=other)
    big = Vocab.build(task_tokens[0], max_vocab=5000, min_freq=2)
    assert len(big) < 5000 and dls.vocab.itos == big.itos + ["zebra", "aardvark"]

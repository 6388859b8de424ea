"""The stage boundary: reading CSVs, folders and BBC News into a tokenised Corpus; splits; bad input."""
import pandas as pd
import pytest

from ulmfit_callbacks import Corpus, load_bbc_news, tokenize
from ulmfit_callbacks.corpus import as_corpus, read_folder, read_texts
from ulmfit_callbacks.tokenizer import SpacyTokenizer


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


def test_malformed_csv(tmp_path):
    (tmp_path / "bad.csv").write_text("text,label\na,b\nc,d,e,f\n")
    with pytest.raises(ValueError, match="not a readable CSV"):
        read_texts(tmp_path / "bad.csv")


def test_corpus_reads_each_source_once_with_the_same_policy(tmp_path, capsys):
    (tmp_path / "d.csv").write_text("text,label\nNone,yes\n   ,no\nGood film.,no\n")
    train = Corpus.read(tmp_path / "d.csv", "text", "label", log=print)
    assert train.texts == ["None", "Good film."] and train.labels == ["yes", "no"]
    assert train.tokens == tokenize(["None", "Good film."])
    assert "skipped 1 row(s)" in capsys.readouterr().out
    every = Corpus.read(tmp_path / "d.csv", "text", "label", training=False)
    assert len(every) == 3 and every.texts[1] == "   "  # evaluation keeps every row, in order
    (tmp_path / "u.txt").write_text("first line\n\nsecond line\n")
    assert Corpus.read(tmp_path / "u.txt").texts == ["first line", "second line"] and Corpus.read(tmp_path / "u.txt").labels is None
    with pytest.raises(ValueError, match="no labels"):
        Corpus.read(tmp_path / "u.txt", label_col="label")
    for cls in ("pos", "neg"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        (tmp_path / "tree" / cls / "1.txt").write_text(f"a {cls} text")
    tree = Corpus.read(tmp_path / "tree", label_col="label")
    assert tree.labels == ["neg", "pos"] and tree.texts == ["a neg text", "a pos text"]
    with pytest.raises(FileNotFoundError):
        Corpus.read(tmp_path / "nope.csv")


def test_split_subset_and_join():
    texts = [f"Text number {i}." for i in range(50)]
    c = Corpus.from_texts(texts, [i % 2 for i in range(50)])
    tr, va = c.split(0.2, seed=3)
    assert len(tr) == 40 and len(va) == 10 and sorted(tr.texts + va.texts) == sorted(texts)
    assert tr.tokens[0] == tokenize([tr.texts[0]])[0] and tr.labels[0] == int(tr.texts[0].split()[2][:-1]) % 2
    tr2, _ = c.split(0.2, seed=3)
    assert tr2.texts == tr.texts  # seeded
    assert c[:5].texts == texts[:5] and c[[7, 2]].labels == [1, 0]
    with pytest.raises(TypeError, match="slice"):
        c[0]
    both = tr + Corpus.from_texts(["unlabelled words"])
    assert len(both) == 41 and both.labels is None  # labels only when both sides have them
    other = Corpus([["xxbos", "x"]], tokenizer=SpacyTokenizer("de"))
    with pytest.raises(ValueError, match="tokenised differently"):
        tr + other
    assert as_corpus(c) is c and as_corpus(pd.Series(["A b."])).tokens == tokenize(["A b."])
    with pytest.raises(TypeError, match="Corpus.read"):
        as_corpus("just one string")
    with pytest.raises(ValueError, match="2 labels"):
        Corpus([["xxbos"]], labels=["a", "b"])


def test_read_csv_blank_lines_tabs_and_standard_input(tmp_path, monkeypatch):
    import io

    from ulmfit_callbacks.corpus import read_csv
    (tmp_path / "a.csv").write_text("text,label\nfirst,x\n\nthird,y\n\n\n")
    df = read_csv(tmp_path / "a.csv")
    assert df.text.tolist() == ["first", "", "third"]  # a blank line inside is a row, those at the end are not
    (tmp_path / "a.tsv").write_text("text\tlabel\nfirst, with a comma\tx\n")
    assert read_csv(tmp_path / "a.tsv").to_dict("list") == {"text": ["first, with a comma"], "label": ["x"]}
    (tmp_path / "t.csv").write_text("text\tlabel\nfirst\tx\n")  # tab-separated, named .csv
    with pytest.raises(ValueError, match="no column 'text'.*tab-separated files need a .tsv name"):
        Corpus.read(tmp_path / "t.csv", "text", "label")
    monkeypatch.setattr("sys.stdin", io.StringIO("text\nNone\n"))
    assert read_csv("-").text.tolist() == ["None"]

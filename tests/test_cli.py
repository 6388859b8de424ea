"""The `ulmfit` command: demo end to end (tiny), predict, evaluate, clear errors, README contract."""
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ulmfit_callbacks.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "ulmfit_callbacks.cli", *args], capture_output=True, text=True,
                          input=stdin, cwd=REPO)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    r = run("demo", "--size", "tiny", "--out", str(out), "--pretrained", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r.stdout


def test_demo_runs_all_stages_and_saves_artifacts(demo_run):
    out, stdout = demo_run
    assert "starts from random weights" in stdout and "no gradual unfreezing" in stdout
    assert "device cpu" in stdout and "precision" in stdout
    assert "sports/199.txt" in stdout  # the non-UTF-8 file is reported
    for name in ("forward", "backward", "ensemble", "TF-IDF \\+ LR"):
        assert re.search(rf"{name}\s+\d\.\d{{4}}", stdout), name
    res = json.loads((out / "results.json").read_text())
    assert set(res["test_accuracy"]) == {"forward", "backward", "ensemble", "TF-IDF + LR"}
    for f in ("confusion_matrix.png", "clf_fwd/lr_per_group.png", "clf_fwd/loss.png", "clf_fwd/history.csv",
              "clf_fwd/model.safetensors", "lm_bwd/vocab.json", "clf_bwd/config.json", "lm_fwd/metrics.json"):
        assert (out / f).exists(), f
    assert json.loads((out / "clf_bwd/config.json").read_text())["backwards"] is True


def test_predict_from_arguments_and_stdin(demo_run):
    out, _ = demo_run
    r = run("predict", "--model", str(out), "The striker scored twice", "Shares fell on Wall Street")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()  # the device line goes to standard error: stdout is data
    assert "ulmfit predict: device" in r.stderr
    assert len(lines) == 2 and lines[0].split("\t")[0] in {"business", "entertainment", "politics", "sports", "tech"}
    r2 = run("predict", "--model", str(out), stdin="The striker scored twice\nShares fell on Wall Street\n")
    assert r2.stdout == r.stdout  # same ensemble, same order


def test_evaluate_reports_accuracy(demo_run, tmp_path):
    out, _ = demo_run
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\nThe team won the match,sports\nThe bank raised rates,business\n")
    r = run("evaluate", str(csv), "--model", str(out / "clf_fwd"))
    assert r.returncode == 0, r.stderr
    assert re.search(r"accuracy [01]\.\d{4}, macro-F1 [01]\.\d{4} on 2 texts", r.stdout) and "precision" in r.stdout
    r = run("evaluate", str(csv), "--model", str(out), "--json", str(tmp_path / "ens.json"))  # the run folder: ensemble
    assert r.returncode == 0 and json.loads((tmp_path / "ens.json").read_text())["ulmfit"]["n"] == 2, r.stderr
    csv.write_text("text,label\nThe team won the match,cricket\n")
    r = run("evaluate", str(csv), "--model", str(out / "clf_fwd"))
    assert r.returncode == 2 and "never seen in training" in r.stderr


@pytest.mark.parametrize("args, msg", [
    (["predict", "--model", "/nonexistent", "x"], "neither a classifier folder"),
    (["finetune-lm", "/nonexistent.csv", "--out", "/tmp/x", "--pretrained", "none"], "no such file"),
    (["train-classifier", "bbc", "--lm", "/nonexistent", "--out", "/tmp/x", "--epochs", "1"], "no such model folder"),
    (["finetune-lm", "README.md", "--out", "/tmp/x", "--emb-sz", "64"], "has its own sizes"),
    (["evaluate", "README.md", "--model", "/tmp/x", "--baseline"], "--baseline fits TF-IDF"),
    (["demo", "--device", "cuda:3"], "no CUDA GPU"),
    (["pretrain", "README.md", "--out", "/tmp/x", "--lr", "-1"], "--lr must be > 0"),
    (["pretrain", "README.md", "--out", "/tmp/x", "--drop-mult", "-0.5"], "--drop-mult must be >= 0"),
    (["finetune-lm", "README.md", "--out", "/tmp/x", "--decay", "0"], "--decay must be > 0"),
])
def test_clear_errors(args, msg):
    r = run(*args)
    assert r.returncode == 2 and msg in r.stderr, r.stderr[-500:]
    assert "Traceback" not in r.stderr


def test_argument_types_are_checked(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["pretrain", "x", "--out", "y", "--epochs", "0"])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_recipe_flags_reach_the_callbacks_and_stages_accept_only_their_own():
    from ulmfit_callbacks import DiscriminativeLR
    from ulmfit_callbacks.cli import _recipe
    from ulmfit_callbacks.pipeline import DEFAULT_CLASSIFIER, DEFAULT_LM, PAPER_CLASSIFIER, Recipe
    a = build_parser().parse_args(["train-classifier", "bbc", "--lm", "x", "--out", "y", "--decay", "1.3",
                                   "--no-gradual-unfreezing", "--unfreeze-schedule", "1,2"])
    r = _recipe(a, "classifier", DEFAULT_CLASSIFIER)
    (dlr,) = [c for c in r.callbacks(classifier=True) if isinstance(c, DiscriminativeLR)]
    assert dlr.decay == 1.3 and r.gradual_unfreezing is False and r.unfreeze_schedule == [1, 2]
    assert r.epochs == DEFAULT_CLASSIFIER.epochs  # untouched fields keep the stage's default
    a = build_parser().parse_args(["finetune-lm", "x", "--out", "y"])
    assert _recipe(a, "lm", DEFAULT_LM) == DEFAULT_LM
    a = build_parser().parse_args(["train-classifier", "x", "--lm", "l", "--out", "y", "--paper"])
    assert a.paper and _recipe(a, "classifier", PAPER_CLASSIFIER).decay == 2.6
    for cmd, flag in (["pretrain", "--decay"], ["pretrain", "--gradual-unfreezing"], ["finetune-lm", "--unfreeze-schedule"]):
        with pytest.raises(SystemExit):  # a flag the stage would ignore is not accepted
            build_parser().parse_args([cmd, "x", "--out", "y", flag, "2"])
    every = {f for fields in __import__("ulmfit_callbacks.cli", fromlist=["x"])._STAGE_FIELDS.values() for f in fields}
    assert every == {f.name for f in dataclasses.fields(Recipe)} - set()  # every Recipe field has a flag somewhere


def test_help_is_there():
    r = run("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("demo", "pretrain", "finetune-lm", "train-classifier",
                                                             "evaluate", "predict"))


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^(python3 -m venv \.venv .*)$", readme, re.M)
    assert len(commands) == 2, "the README opens with exactly two commands"
    assert "ulmfit demo" in commands[0] and "pytest" in commands[1]
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def test_qrnn_bf16_stages_and_the_kept_vocabulary(tmp_path, general_texts, task):
    general, task_csv = tmp_path / "general.csv", tmp_path / "task.csv"
    import pandas as pd
    pd.DataFrame({"text": general_texts[0][:60]}).to_csv(general, index=False)
    task[0].head(200).to_csv(task_csv, index=False)
    small = ["--emb-sz", "8", "--n-hid", "16", "--n-layers", "2", "--bs", "8", "--bptt", "20"]
    r = run("pretrain", str(general), "--out", str(tmp_path / "s1"), "--arch", "qrnn", "--bf16", "--drop-mult", "0.5",
            *small)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((tmp_path / "s1" / "config.json").read_text())["config"]
    assert cfg["arch"] == "qrnn" and cfg["weight_p"] == 0.1
    r = run("finetune-lm", str(task_csv), "--pretrained", str(tmp_path / "s1"), "--out", str(tmp_path / "lm"),
            "--keep-pretrained-vocab", "--bs", "8", "--bptt", "20")
    assert r.returncode == 0, r.stderr[-2000:]
    s1 = json.loads((tmp_path / "s1" / "vocab.json").read_text())["itos"]
    lm = json.loads((tmp_path / "lm" / "vocab.json").read_text())["itos"]
    assert set(s1) <= set(lm)
    assert json.loads((tmp_path / "lm" / "config.json").read_text())["config"]["arch"] == "qrnn"


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A user's CSV: literal words that pandas would read as missing, an empty text, a missing label,
    extra columns; a tiny model trained on it from random weights through the CLI."""
    import pandas as pd
    from conftest import bbc_short_texts
    d = tmp_path_factory.mktemp("messy")
    df = bbc_short_texts()
    df = df[df.label.isin(["sports", "business"])].head(118)[["text", "label"]].reset_index(drop=True)
    extra = pd.DataFrame({"text": ["None", "NA", "null", "", "The match was won"],
                          "label": ["sports", "business", "sports", "sports", ""]})
    df = pd.concat([df, extra], ignore_index=True)
    df.insert(0, "id", [f"row{i}" for i in range(len(df))])
    df.to_csv(d / "data.csv", index=False)
    small = ["--pretrained", "none", "--emb-sz", "16", "--n-hid", "32", "--n-layers", "2", "--epochs", "1", "--bs", "8",
             "--bptt", "20", "--max-vocab", "2000", "--device", "cpu"]
    r1 = run("finetune-lm", str(d / "data.csv"), "--out", str(d / "lm"), *small)
    # 121 usable rows -> 109 training rows: with --bs 12 the last training batch would hold one row
    r2 = run("train-classifier", str(d / "data.csv"), "--lm", str(d / "lm"), "--out", str(d / "clf"), "--epochs", "2",
             "--bs", "12", "--max-tokens", "30", "--class-weights", "balanced")
    return d, df, r1, r2


def test_messy_csv_trains_with_every_skip_reported(messy):
    d, df, r1, r2 = messy
    assert r1.returncode == 0, r1.stderr[-2000:]
    assert "starts from random weights" in r1.stdout and "skipped 1 row(s) with empty or whitespace-only text (rows [121])" in r1.stdout
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "skipped 1 row(s) with empty" in r2.stdout and "skipped 1 row(s) with missing label (rows [122])" in r2.stdout
    assert "the LM was fine-tuned from random weights" in r2.stdout and "class weights: business" in r2.stdout
    assert "epoch 1" in r2.stdout and "\r" not in r2.stdout  # one plain line per epoch in a log, no bars
    cfg = json.loads((d / "clf" / "config.json").read_text())
    assert cfg["max_tokens"] == 30
    hist = (d / "clf" / "history.csv").read_text().splitlines()
    assert hist[0].startswith("epoch,train_loss,valid_loss") and len(hist) == 3


def test_evaluate_scores_every_labelled_row_and_stands_beside_the_baseline(messy):
    d, df, _, _ = messy
    labelled = df[df.label != ""]
    labelled.to_csv(d / "eval.csv", index=False)
    r = run("evaluate", str(d / "eval.csv"), "--model", str(d / "clf"), "--baseline", "--train", str(d / "data.csv"),
            "--json", str(d / "m.json"), "--confusion", str(d / "cm.png"))
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((d / "m.json").read_text())
    assert m["ulmfit"]["n"] == len(labelled) == 122  # the empty text is evaluated too
    per_class = m["ulmfit"]["per_class"]
    assert set(per_class) == {"business", "sports"}
    assert sum(c["support"] for c in per_class.values()) == 122
    assert m["ulmfit"]["macro_f1"] == pytest.approx(sum(c["f1"] for c in per_class.values()) / len(per_class))
    assert 0.5 <= m["tfidf_lr"]["accuracy"] <= 1 and "ULMFiT - baseline" in r.stdout and (d / "cm.png").exists()


def test_predict_csv_round_trips_10000_rows_with_every_column(messy):
    import pandas as pd
    d, df, _, _ = messy
    big = pd.concat([df] * (10_000 // len(df) + 1), ignore_index=True).iloc[:10_000]
    big["id"] = [f"r{i}" for i in range(len(big))]
    big.to_csv(d / "big.csv", index=False)
    r = run("predict", "--model", str(d / "clf"), "--csv", str(d / "big.csv"), "--out", str(d / "pred.csv"))
    assert r.returncode == 0, r.stderr[-2000:]
    out = pd.read_csv(d / "pred.csv", dtype=str, keep_default_na=False)
    assert len(out) == 10_000 and out["id"].tolist() == big["id"].tolist()
    assert out["text"].tolist() == big["text"].fillna("").tolist()  # "None", "NA", "" come back as written
    assert {"predicted_label", "probability", "prob_business", "prob_sports", "empty_text", "label"} <= set(out.columns)
    p = out[["prob_business", "prob_sports"]].astype(float).to_numpy()
    assert abs(p.sum(1) - 1).max() < 1e-4 and out.empty_text.eq("True").sum() == (big.text.fillna("") == "").sum()
    r = run("predict", "--model", str(d / "clf"), "--csv", "-", "--out", "-", stdin="text\nNone\nThe match was won\n")
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("text,predicted_label,probability")


def test_ordinary_files_from_users(messy):
    """Files as people make them: a spreadsheet's empty label rows and padded labels, a TSV, blank lines."""
    import pandas as pd
    d, df, _, _ = messy
    ev = df[df.label != ""].head(20).copy()
    ev["label"] = ev["label"] + " "  # "sports " is "sports"
    pd.concat([ev, pd.DataFrame({"id": ["x", "y"], "text": ["More news", "And more"], "label": ["", ""]})]
              ).to_csv(d / "sheet.csv", index=False)
    r = run("evaluate", str(d / "sheet.csv"), "--model", str(d / "clf"), "--json", str(d / "sheet.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 row(s) without a label are left out of the metrics (rows [20, 21])" in r.stdout
    assert json.loads((d / "sheet.json").read_text())["ulmfit"]["n"] == 20
    ev.to_csv(d / "sheet.tsv", sep="\t", index=False)
    r = run("evaluate", str(d / "sheet.tsv"), "--model", str(d / "clf"), "--json", str(d / "tsv.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((d / "tsv.json").read_text())["ulmfit"] == json.loads((d / "sheet.json").read_text())["ulmfit"]
    r = run("evaluate", str(d / "sheet.tsv"), "--model", str(d / "clf"), "--label-col", "labels")
    assert r.returncode == 1 and "has no column 'labels'" in r.stderr and "--label-col" in r.stderr
    (d / "lines.lst").write_text("The match was won\n\nShares fell\n")
    r = run("predict", "--model", str(d / "clf"), "--file", str(d / "lines.lst"))  # any name: one text per line
    assert r.returncode == 0 and len(r.stdout.strip("\n").split("\n")) == 3, r.stdout + r.stderr
    (d / "one_col.csv").write_text("text\nThe match was won\n\nShares fell\n")
    r = run("predict", "--model", str(d / "clf"), "--csv", str(d / "one_col.csv"), "--out", str(d / "one.csv"))
    assert r.returncode == 0 and len(pd.read_csv(d / "one.csv")) == 3  # the blank line is a row too


def test_multi_label_through_the_cli(messy):
    import pandas as pd
    d, df, _, _ = messy
    ml = df[df.label != ""][["text", "label"]].sample(60, random_state=0)
    ml["label"] = [f"{l}; short;" if len(t) < 200 else l for t, l in zip(ml.text, ml.label)]  # spaces, a trailing ';'
    ml.to_csv(d / "ml.csv", index=False)
    r = run("train-classifier", str(d / "ml.csv"), "--multi-label", "--lm", str(d / "lm"), "--out", str(d / "clf_ml"),
            "--epochs", "1", "--bs", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((d / "clf_ml" / "config.json").read_text())["classes"] == ["business", "short", "sports"]
    ev = pd.concat([ml.head(10), pd.DataFrame({"text": ["no label here"], "label": [""]})])
    ev.to_csv(d / "ml_ev.csv", index=False)
    r = run("evaluate", str(d / "ml_ev.csv"), "--model", str(d / "clf_ml"), "--baseline", "--train", str(d / "ml.csv"),
            "--confusion", str(d / "ml_cm.png"), "--json", str(d / "ml.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 row(s) without a label are left out" in r.stdout and "skipped for this multi-label model" in r.stdout
    assert "not written" in r.stdout and not (d / "ml_cm.png").exists()
    m = json.loads((d / "ml.json").read_text())
    assert set(m) == {"ulmfit"} and m["ulmfit"]["n"] == 10 and set(m["ulmfit"]["per_label_f1"]) == {"business", "short", "sports"}
    ev.assign(label="sports;tennis").to_csv(d / "ml_bad.csv", index=False)
    r = run("evaluate", str(d / "ml_bad.csv"), "--model", str(d / "clf_ml"))
    assert r.returncode == 2 and "['tennis'] were never seen in training" in r.stderr


@pytest.mark.parametrize("out", ["lm", "data.csv"])
def test_out_never_replaces_an_input(messy, out):
    d = messy[0]
    before = {p.name: p.read_bytes() for p in [d / "data.csv", *(d / "lm").iterdir()]}
    r = run("train-classifier", str(d / "data.csv"), "--lm", str(d / "lm"), "--out", str(d / out), "--epochs", "1")
    assert r.returncode == 2 and ("input model" if out == "lm" else "is a file") in r.stderr
    assert {p.name: p.read_bytes() for p in [d / "data.csv", *(d / "lm").iterdir()]} == before


GERMAN = {  # written for this test: two topics, a few paragraphs each
    "sport": ["Die Mannschaft gewann das Spiel am Samstag mit zwei zu null.",
              "Der Trainer lobte die Abwehr nach dem Sieg im Stadion.",
              "Im Finale schoss der Stürmer zwei Tore für seinen Verein.",
              "Die Spielerinnen feierten den Pokal mit ihren Fans.",
              "Nach der Niederlage sprach der Kapitän über die nächste Saison.",
              "Das Rennen endete mit einem knappen Sieg der Läuferin."],
    "wetter": ["Morgen wird es im Norden regnerisch und kühl.",
               "Am Wochenende scheint die Sonne, die Temperaturen steigen.",
               "Im Süden zieht ein Gewitter mit starkem Wind auf.",
               "Der Winter bringt Schnee in die Berge und Frost in den Tälern.",
               "Nebel liegt am Morgen über den Feldern, später wird es klar.",
               "Die Wetterdienste warnen vor Sturm an der Küste."],
}


def test_german_with_sentencepiece_through_all_three_stages(tmp_path):
    """lang= and SentencePiece from stage 1 on; stages 2 and 3 and predict (fresh processes) use the
    stage-1 tokenizer, saved as spm.model in every model folder."""
    import pandas as pd
    rows = [(t, c) for c, ts in GERMAN.items() for t in ts] * 4
    pd.DataFrame({"text": [t for t, _ in rows]}).to_csv(tmp_path / "general.csv", index=False)
    pd.DataFrame({"text": [t for t, _ in rows], "label": [c for _, c in rows]}).to_csv(tmp_path / "task.csv", index=False)
    small = ["--emb-sz", "8", "--n-hid", "16", "--n-layers", "2", "--bs", "4", "--bptt", "10", "--epochs", "1"]
    r = run("pretrain", str(tmp_path / "general.csv"), "--out", str(tmp_path / "s1"), "--tokenizer", "sentencepiece",
            "--lang", "de", "--vocab-sz", "120", *small)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tokenizer: sentencepiece (de)" in r.stdout
    tok = json.loads((tmp_path / "s1" / "config.json").read_text())["tokenizer"]
    assert tok["name"] == "sentencepiece" and tok["lang"] == "de" and (tmp_path / "s1" / "spm.model").exists()
    r = run("finetune-lm", str(tmp_path / "task.csv"), "--pretrained", str(tmp_path / "s1"), "--out", str(tmp_path / "lm"),
            "--bs", "4", "--bptt", "10", "--epochs", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("train-classifier", str(tmp_path / "task.csv"), "--lm", str(tmp_path / "lm"), "--out", str(tmp_path / "clf"),
            "--epochs", "1", "--bs", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "recipe: 43 labelled training texts (<= 1000): the few-label recipe" in r.stdout  # 48 rows, 10% validation
    assert len((tmp_path / "clf" / "history.csv").read_text().splitlines()) == 2  # --epochs 1 still wins
    for d in ("lm", "clf"):
        assert json.loads((tmp_path / d / "config.json").read_text())["tokenizer"] == tok
        assert (tmp_path / d / "spm.model").read_bytes() == (tmp_path / "s1" / "spm.model").read_bytes()
    vocab = json.loads((tmp_path / "clf" / "vocab.json").read_text())["itos"]
    assert any(t.startswith("\u2581") for t in vocab)  # SentencePiece pieces, not spaCy words
    r = run("predict", "--model", str(tmp_path / "clf"), "Der Stürmer schoss ein Tor.")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1].split("\t")[0] in GERMAN
    r = run("finetune-lm", str(tmp_path / "task.csv"), "--pretrained", str(tmp_path / "s1"), "--out", str(tmp_path / "x"),
            "--tokenizer", "sentencepiece")
    assert r.returncode == 2 and "brings its own tokenizer" in r.stderr

"""The `ulmfit` command: demo end to end (tiny), predict, evaluate, clear errors, README contract."""
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
    r = run("demo", "--size", "tiny", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r.stdout


def test_demo_runs_all_stages_and_saves_artifacts(demo_run):
    out, stdout = demo_run
    assert "starts from random weights" in stdout
    assert "sports/199.txt" in stdout  # the non-UTF-8 file is reported
    for name in ("forward", "backward", "ensemble"):
        assert re.search(rf"{name}\s+\d\.\d{{4}}", stdout), name
    res = json.loads((out / "results.json").read_text())
    assert set(res["test_accuracy"]) == {"forward", "backward", "ensemble"}
    for f in ("confusion_matrix.png", "clf_fwd/lr_per_group.png", "clf_fwd/weights.pt", "lm_bwd/vocab.json",
              "clf_bwd/config.json", "lm_fwd/metrics.json"):
        assert (out / f).exists(), f
    assert json.loads((out / "clf_bwd/config.json").read_text())["backwards"] is True


def test_predict_from_arguments_and_stdin(demo_run):
    out, _ = demo_run
    r = run("predict", "--model", str(out), "The striker scored twice", "Shares fell on Wall Street")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] in {"business", "entertainment", "politics", "sports", "tech"}
    r2 = run("predict", "--model", str(out), stdin="The striker scored twice\nShares fell on Wall Street\n")
    assert r2.stdout == r.stdout  # same ensemble, same order


def test_evaluate_reports_accuracy(demo_run, tmp_path):
    out, _ = demo_run
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\nThe team won the match,sports\nThe bank raised rates,business\n")
    r = run("evaluate", str(csv), "--model", str(out / "clf_fwd"))
    assert r.returncode == 0, r.stderr
    assert re.search(r"accuracy [01]\.\d{4} on 2 texts", r.stdout) and "precision" in r.stdout
    csv.write_text("text,label\nThe team won the match,cricket\n")
    r = run("evaluate", str(csv), "--model", str(out / "clf_fwd"))
    assert r.returncode == 2 and "never seen in training" in r.stderr


@pytest.mark.parametrize("args, msg", [
    (["predict", "--model", "/nonexistent", "x"], "neither a classifier folder"),
    (["finetune-lm", "/nonexistent.csv", "--out", "/tmp/x"], "no such file"),
    (["train-classifier", "bbc", "--lm", "/nonexistent", "--out", "/tmp/x", "--epochs", "1"], "not a saved model"),
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


def test_decay_reaches_the_discriminative_lr_callback():
    from ulmfit_callbacks import DiscriminativeLR
    from ulmfit_callbacks.cli import _recipe
    a = build_parser().parse_args(["train-classifier", "bbc", "--lm", "x", "--out", "y", "--decay", "1.3"])
    (dlr,) = [c for c in _recipe(a, classifier=True).callbacks(classifier=True) if isinstance(c, DiscriminativeLR)]
    assert dlr.decay == 1.3
    a = build_parser().parse_args(["finetune-lm", "x", "--out", "y"])
    assert _recipe(a).decay == 2.6


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

"""Build the LM that ships inside the package, and its model card, from two `ulmfit pretrain` runs.

The runs (one thread each, both directions at once on 2 cores; recorded in the card):

    OMP_NUM_THREADS=1 /usr/bin/time -v ulmfit pretrain ../shared/data/general --out runs/stage1/general_fwd \\
        --emb-sz 200 --n-hid 400 --n-layers 3 --bf16 --drop-mult 0.2 --epochs 3 --lr 0.01 > runs/stage1/general_fwd/log.txt 2>&1
    (the same with --backwards and general_bwd)

then

    python benchmarks/ship_general_lm.py runs/stage1

exports both folders in fp16 (`ulmfit export --half`) to `ulmfit_callbacks/weights/general-{fwd,bwd}`
and writes `ulmfit_callbacks/weights/MODEL_CARD.md` from the runs' logs and metrics.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, REPO, machine, record, tokens  # noqa: E402

WEIGHTS = REPO / "ulmfit_callbacks" / "weights"


def _epochs(log: str) -> list[dict]:
    rows = []
    for line in log.replace("\r", "\n").splitlines():
        m = re.match(r"^(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d:]+)\s*$", line)
        if m:
            rows.append(dict(epoch=int(m[1]) + 1, train_loss=float(m[2]), valid_loss=float(m[3]), accuracy=float(m[4]),
                             perplexity=float(m[5]), time=m[6]))
    return rows


def _time_v(log: str, key: str) -> str:
    m = re.search(rf"{re.escape(key)}: (.+)", log)
    return m[1].strip() if m else "?"


def main():
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/stage1")
    info = {}
    for d in ("fwd", "bwd"):
        src = runs / f"general_{d}"
        subprocess.run([str(Path(sys.executable).with_name("ulmfit")), "export", str(src), str(WEIGHTS / f"general-{d}"),
                        "--half"], check=True)
        (WEIGHTS / f"general-{d}" / "metrics.json").unlink(missing_ok=True)
        log = (src / "log.txt").read_text(errors="replace")
        cfg = json.loads((src / "config.json").read_text())
        from ulmfit_callbacks.artifact import read_model_folder
        state = read_model_folder(WEIGHTS / f"general-{d}")[2]
        n_params = sum(v.numel() for k, v in state.items() if k != "decoder.decoder.weight")
        info[d] = dict(params=n_params, epochs=_epochs(log), wall=_time_v(log, "Elapsed (wall clock) time (h:mm:ss or m:ss)"),
                       peak_rss_kib=_time_v(log, "Maximum resident set size (kbytes)"), config=cfg["config"],
                       vocab=len(json.loads((src / "vocab.json").read_text())["itos"]),
                       mib=sum(f.stat().st_size for f in (WEIGHTS / f"general-{d}").iterdir()) / 2**20)
    import pandas as pd
    tr = pd.read_csv(DATA / "general" / "train.csv")
    va = pd.read_csv(DATA / "general" / "valid.csv")
    n_tok = sum(map(len, tokens(tr.text.tolist(), "general_train")))
    n_vtok = sum(map(len, tokens(va.text.tolist(), "general_valid")))
    sources = ", ".join(f"{s} ({n:,})" for s, n in tr.source.value_counts().items())
    f, b = info["fwd"], info["bwd"]
    c = f["config"]
    table = "\n".join(f"| {e['epoch']} | {e['perplexity']:.1f} | {be['perplexity']:.1f} | {e['time']} / {be['time']} |"
                      for e, be in zip(f["epochs"], b["epochs"]))
    card = f"""# `general`: the general-domain AWD-LSTM shipped with ulmfit_callbacks

Stage 1 of ULMFiT (Howard & Ruder 2018) at CPU scale, forward (`general-fwd`) and backward
(`general-bwd`, trained on reversed token order). `pretrained="general"` (Python) and
`--pretrained general` (CLI) load it; stage 2 fine-tunes it on your text.

| | |
| --- | --- |
| architecture | AWD-LSTM, embedding {c['emb_sz']}, hidden {c['n_hid']}, {c['n_layers']} layers, tied decoder with bias |
| parameters | {f['params'] / 1e6:.2f} M per direction (the decoder shares the embedding) |
| vocabulary | {f['vocab']:,} tokens (fastai's special tokens, then every token seen at least twice in the training text, most frequent first, at most 30,000) |
| tokenizer | fastai's rules on spaCy's blank English tokenizer (`xxbos`, `xxmaj`, `xxup`, `xxrep`...), as every model of this library |
| stored | fp16 safetensors (loaded as fp32), {f['mib'] + b['mib']:.1f} MiB for both directions |
| validation perplexity | **{f['epochs'][-1]['perplexity']:.1f}** forward, **{b['epochs'][-1]['perplexity']:.1f}** backward (on the corpus's validation split, {n_vtok:,} tokens) |
| training wall time | {f['wall']} forward, {b['wall']} backward (h:mm:ss; one thread each, both at once on a 2-core {machine().split(',')[0]}, beside other work) |
| peak resident memory | {int(f['peak_rss_kib']) / 2**20:.2f} GiB forward, {int(b['peak_rss_kib']) / 2**20:.2f} GiB backward (`/usr/bin/time -v`, whole run) |

## Corpus

`../shared/data/general` of this project: {len(tr):,} training and {len(va):,} validation paragraphs,
{n_tok:,} training tokens after tokenisation, English, from the NLTK data collection: {sources}.
(The Brown corpus with its tags stripped, ABC science and rural news, web text, State of the Union
and inaugural addresses, a Penn Treebank WSJ sample.) About 1/40 of WikiText-103, the corpus of
the paper's LM.

## Recipe

`ulmfit pretrain` with the flags under Rebuild: Adam (betas 0.8 / 0.99), weight decay 0.01, batch
size 32, BPTT 70 with the paper's variable length, slanted triangular learning rates peaking at
0.01 over all iterations (cut_frac 0.1, ratio 32), one lr for every layer, AR/TAR (alpha 2,
beta 1), the AWD-LSTM dropouts times 0.2 (a small corpus, few epochs: less regularisation
reached lower perplexity in `benchmarks/RESULTS_ARCHIVE.md`, "Stage 1 at CPU scale"), bf16 autocast, fused decoder + loss.

| epoch | perplexity fwd | perplexity bwd | time fwd / bwd |
| ---: | ---: | ---: | --- |
{table}

## Rebuild

```bash
OMP_NUM_THREADS=1 ulmfit pretrain ../shared/data/general --out runs/stage1/general_fwd --emb-sz 200 --n-hid 400 \\
    --n-layers 3 --bf16 --drop-mult 0.2 --epochs 3 --lr 0.01
OMP_NUM_THREADS=1 ulmfit pretrain ../shared/data/general --out runs/stage1/general_bwd --emb-sz 200 --n-hid 400 \\
    --n-layers 3 --bf16 --drop-mult 0.2 --epochs 3 --lr 0.01 --backwards
python benchmarks/ship_general_lm.py runs/stage1      # fp16 export + this card
```

(`benchmarks/ship_general_lm.py`'s docstring has the exact logging form used.)

## Intended use and limits

Intended use: the starting point of ULMFiT's stage 2 (LM fine-tuning) and stage 3 (classifiers)
for English text on machines without a GPU, and a small, fast default when no larger LM is at
hand. It is not a text generator for people to read, and not a substitute for a WikiText-103 LM
(fastai's `wt103`, perplexity about 30 on its own data) where that is available: the corpus is
small (3 M tokens), mostly American and British prose of the 20th century, news and speeches;
domains far from it (code, social media, medicine, other languages) get little from it beyond
the English basics. Biases of the sources are in the model. Measured downstream results
(`ulmfit demo`, TREC-6, MR, BBC with the CLI's defaults) are in `benchmarks/RESULTS.md`.
"""
    (WEIGHTS / "MODEL_CARD.md").write_text(card)
    record("shipped_lm", dict(info=info, train_tokens=n_tok, valid_tokens=n_vtok))
    print(card)


if __name__ == "__main__":
    main()

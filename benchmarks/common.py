"""Shared bits of the benchmark scripts: data paths, machine description, result recording."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ULMFIT_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("ULMFIT_BENCH_CACHE", Path.home() / ".cache" / "ulmfit_callbacks" / "bench"))


def machine() -> str:
    import torch
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    import fastai
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"fastai {fastai.__version__}, Python {platform.python_version()}")


def record(name: str, result: dict):
    """Write ``benchmarks/results/<name>.json`` (``$ULMFIT_BENCH_RESULTS/<name>.json`` if set) with the
    command, date and machine."""
    out = Path(os.environ.get("ULMFIT_BENCH_RESULTS", REPO / "benchmarks" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    except OSError:
        commit = ""
    payload = dict(command="python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
                   date=datetime.datetime.now().isoformat(timespec="seconds"), machine=machine(), commit=commit,
                   result=result)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=float))
    return payload


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM). Unlike ``ru_maxrss``, it is not inherited
    from the parent across fork + exec, so a fresh subprocess measures only itself."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def tokens(texts, cache_name: str) -> list[list[str]]:
    """fastai-tokenised ``texts``, cached in ``CACHE/tokens_<cache_name>.json``."""
    path = CACHE / f"tokens_{cache_name}.json"
    if path.exists():
        return json.loads(path.read_text())
    from ulmfit_callbacks import tokenize
    toks = tokenize(list(texts), n_workers=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(toks))
    return toks

"""Memory of `lmadapt advise` on a large domain corpus: this checkout against another, one run.

`lmadapt advise` counts the whole domain corpus (documents, characters, length percentiles) and
measures a ~250k-character sample of it. Each variant runs the same command in a fresh process
(``--no-probe``, one second of model work, so the corpus dominates) while this script samples the
child's anonymous memory every 0.1 s; peak RSS comes from the child's rusage.

    git worktree add /tmp/lmadapt-before <commit>
    python benchmarks/pretrain_memory.py --make-corpus ../shared/data --copies 3 --data /tmp/big/corpus.jsonl ...
    python benchmarks/advise_memory.py --model .cache/smollm2 --domain /tmp/big/corpus.jsonl \\
        --baseline-src /tmp/lmadapt-before/src

Prints a table (peak RSS, peak anon, wall seconds, the advice's document and character counts,
which must agree) and the ratios this checkout / baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_memory import smaps  # noqa: E402 - the same /proc sampling as the pretrain benchmark

ROOT = Path(__file__).resolve().parent.parent


def run(src: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "advice.json"
        cmd = [sys.executable, "-m", "lmadapt.cli", "advise", args.model, "--goal", "generate", "--domain",
               args.domain, "--no-probe", "--time-budget", "1", "--max-eval-tokens", "512", "--output", str(out)]
        env = {**os.environ, "PYTHONPATH": src, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak_anon = 0.0
        while proc.poll() is None:
            peak_anon = max(peak_anon, smaps(proc.pid).get("Anonymous", 0.0))
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
        err = proc.stderr.read()
        if proc.returncode != 0:
            raise SystemExit(f"advise with {src} failed:\n{err[-3000:]}")
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        dom = json.loads(out.read_text())["measurements"]["domain"]
    # ru_maxrss of children is the largest of any child so far: runs go smallest-expected first
    return {"peak_rss_mb": round(rss / 1024) if rss > before else None, "peak_anon_mb": round(peak_anon),
            "seconds": round(seconds, 1), "documents": dom["documents"], "chars": dom["chars"],
            "sampled_documents": dom["sampled_documents"], "p95": dom["length_tokens_p95"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--baseline-src", required=True, help="src/ folder of the checkout to compare against")
    args = ap.parse_args()
    size = Path(args.domain).stat().st_size / 2**20 if Path(args.domain).is_file() else float("nan")
    print(f"domain corpus: {args.domain} ({size:,.0f} MB); model {args.model}")
    rows = {"lmadapt": run(str(ROOT / "src"), args), "baseline": run(args.baseline_src, args)}
    cols = list(rows["lmadapt"])
    print("variant    " + "  ".join(f"{c:>17}" for c in cols))
    for name, r in rows.items():
        print(f"{name:<10} " + "  ".join(f"{r[c] if r[c] is not None else 'n/a':>17}" for c in cols))
    a, b = rows["lmadapt"], rows["baseline"]
    same = all(a[k] == b[k] for k in ("documents", "chars", "sampled_documents", "p95"))
    print(f"same measurements: {same}; peak anon lmadapt/baseline = {a['peak_anon_mb'] / max(b['peak_anon_mb'], 1):.2f}")


if __name__ == "__main__":
    main()

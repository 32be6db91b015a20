"""Run one `lmadapt` command and record this process's memory: the worker the memory benchmarks launch.

    python benchmarks/memory_worker.py OUT.json [--cap-gib G | --cap-mib M] -- pretrain RECIPE key=value ...
    torchrun --nproc_per_node 2 benchmarks/memory_worker.py OUT.json -- pretrain ...   (OUT.rank<R>.json)

Baseline: the resident set once torch, transformers, datasets and the pretrain stage are imported
(what every process pays before it holds a model); peak: the resident set's high-water mark
(ru_maxrss) at exit, and on a GPU torch's peak allocated / reserved bytes. ``--cap-gib`` limits
this process's CUDA memory to G GiB (torch.cuda.set_per_process_memory_fraction) to stand in for a
smaller GPU; an out-of-memory error is recorded ("oom": true) instead of raised. ``--cap-mib`` is
the CPU's stand-in: this process may map at most M MiB of data memory beyond what it had after the
imports (RLIMIT_DATA: heap and anonymous mappings, where tensors live), so an allocation past it
fails as it would on a smaller machine. The data memory's high-water mark is sampled every 5 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path


def status_bytes(field: str) -> int:
    """A size from /proc/self/status: VmRSS (resident set), VmData (heap and anonymous mappings)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class DataPeak(threading.Thread):
    """The highest VmData seen (the kernel keeps no high-water mark of it), sampled every 5 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = status_bytes("VmData")

    def run(self):
        while True:
            self.peak = max(self.peak, status_bytes("VmData"))
            time.sleep(0.005)


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--cap-gib", type=float, default=None)
    ap.add_argument("--cap-mib", type=float, default=None, help="CPU: data memory allowed above the baseline")
    args = ap.parse_args(argv[:split])
    command = argv[split + 1:]

    import torch
    import transformers  # noqa: F401 - imported before the baseline, as every lmadapt process does
    import datasets  # noqa: F401

    import lmadapt.stages.pretrain  # noqa: F401
    from lmadapt.cli import main as lmadapt_main

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if args.cap_gib:
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2 ** 30 / total))
    baseline, data_baseline = status_bytes("VmRSS"), status_bytes("VmData")
    if args.cap_mib:
        limit = data_baseline + int(args.cap_mib * 2**20)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    data_peak = DataPeak()
    data_peak.start()
    t0 = time.time()
    oom, code, error = False, None, None
    try:
        code = lmadapt_main(command)
    except torch.OutOfMemoryError as exc:   # the point of a capped run: record it, do not crash the benchmark
        oom, error = True, str(exc).splitlines()[0][:300]
    except MemoryError as exc:              # CPU under --cap-mib: Python's own allocations
        oom, error = True, f"MemoryError: {exc}"[:300]
    except RuntimeError as exc:             # some kernels report it as a plain CUDA error; CPU: torch's allocator
        if "out of memory" not in str(exc) and "can't allocate memory" not in str(exc):
            raise
        oom, error = True, str(exc).splitlines()[0][:300]
    record = {"rank": int(os.environ.get("RANK", "0")), "world_size": int(os.environ.get("WORLD_SIZE", "1")),
              "command": command, "exit_code": code, "oom": oom, "error": error, "seconds": round(time.time() - t0, 1),
              "baseline_rss_bytes": baseline, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "cap_gib": args.cap_gib, "cap_mib": args.cap_mib, "baseline_data_bytes": data_baseline,
              "peak_data_bytes": max(data_peak.peak, status_bytes("VmData"))}
    if cuda:
        record.update(cuda_peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                      cuda_peak_reserved_bytes=torch.cuda.max_memory_reserved(),
                      device=torch.cuda.get_device_name())
    out = Path(args.out)
    if record["world_size"] > 1:
        out = out.with_name(f"{out.stem}.rank{record['rank']}{out.suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    if oom and record["world_size"] > 1:
        os._exit(3)   # the other processes wait in a collective: end this one's part at once
    return 0 if oom else int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

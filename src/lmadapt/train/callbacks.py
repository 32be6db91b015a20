"""Trainer callbacks: a JSONL log every stage writes, and a progress bar with tokens/s and ETA."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback


class JsonlLogCallback(TrainerCallback):
    """Appends every Trainer log (loss, lr, eval loss, tokens seen) to ``logs.jsonl``.

    Held-out losses get a perplexity beside them so plots of "perplexity vs tokens seen" need
    nothing but this file. Only the main process writes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.t0 = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.time()
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file():  # a resume (or a start over where no checkpoint was left)
                self._cut_after(state.global_step)

    def _cut_after(self, step: int) -> None:
        """A resume from step N (0: no checkpoint was left): drop the rows a killed part logged after N
        (they are trained and logged again), and continue ``elapsed_s`` from the last row kept."""
        from ..runtime.outputs import atomic_write_text

        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        if kept:
            self.t0 -= float(json.loads(kept[-1]).get("elapsed_s") or 0.0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {
            "step": state.global_step,
            "epoch": state.epoch,
            "tokens_seen": getattr(state, "num_input_tokens_seen", None),
            "elapsed_s": round(time.time() - (self.t0 or time.time()), 3),
        }
        for key, value in logs.items():
            row[key] = value
            if key.endswith("_loss") and key.startswith("eval") and isinstance(value, (int, float)):
                row[key[:-5] + "_perplexity"] = math.exp(min(value, 50))
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


class TokenProgressCallback(TrainerCallback):
    """A live bar: step, loss, tokens/s and MFU (``flops_per_token`` x tokens/s / ``peak_flops``, see
    train/flops.py); tqdm supplies elapsed and ETA. On a GPU the token count is read only when the
    Trainer logs (train/speed.py), so the rate is taken at the last time the count moved."""

    def __init__(self, flops_per_token: float | None = None, peak_flops: float | None = None):
        self.bar = None
        self.t0 = None
        self.tokens0 = 0
        self.last_loss = None
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.seen = (0, None)  # (tokens, time) when the count last changed

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=1.0,
            )
            self.t0 = time.time()
            self.tokens0 = getattr(state, "num_input_tokens_seen", 0) or 0

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        self.bar.update(state.global_step - self.bar.n)
        tokens = (getattr(state, "num_input_tokens_seen", 0) or 0) - self.tokens0
        if tokens != self.seen[0]:
            self.seen = (tokens, time.time())
        elapsed = max((self.seen[1] or time.time()) - self.t0, 1e-9)
        post = {"tok/s": f"{tokens / elapsed:,.0f}"}
        if self.flops_per_token and self.peak_flops and tokens:
            post["MFU"] = f"{100 * tokens / elapsed * self.flops_per_token / self.peak_flops:.1f}%"
        if self.last_loss is not None:
            post["loss"] = f"{self.last_loss:.4f}"
        self.bar.set_postfix(post, refresh=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = logs["loss"]
        if self.bar is not None and logs and any(k.startswith("eval_") for k in logs):
            skip = ("runtime", "samples_per_second", "steps_per_second", "epoch")
            parts = [
                f"{k[5:]}={v:.4f}"
                for k, v in logs.items()
                if k.startswith("eval_") and isinstance(v, (int, float)) and not k.endswith(skip)
            ]
            if parts:
                self.bar.write(f"[eval @ step {state.global_step}] " + " ".join(parts))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

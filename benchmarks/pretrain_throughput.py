"""Continued-pretraining throughput: lmadapt document packing vs two baselines, one run.

Same model, same documents, same optimizer, same batch size and machine; only the data layout
differs:
  (a) concat-and-chunk as transformers' run_clm example does it: tokenize without separators,
      concatenate each map batch of 1,000 documents, cut into blocks, drop each batch's remainder;
  (b) one document per row, truncated to the block size, padded to the longest in the batch;
  (c) lmadapt: documents + EOS packed into blocks, no token dropped, positions restarting at every
      document so attention never crosses a document boundary (block-diagonal causal mask).
Prints tokens/s (all and useful = non-pad tokens), the ratios, non-pad fraction and tokens dropped.

    .venv/bin/python benchmarks/pretrain_throughput.py --data ../shared/data/computing/train.jsonl.gz
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch


def read_docs(path: str, limit: int, seed: int) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        docs = [json.loads(line)["text"] for line in fh if line.strip()]
    random.Random(seed).shuffle(docs)
    return docs[:limit]


def run_clm_blocks(docs, tokenizer, block_size):
    """transformers examples/pytorch/language-modeling/run_clm.py: tokenize, then group_texts
    per map batch (default batch_size=1000), dropping each batch's remainder."""
    import datasets
    ds = datasets.Dataset.from_dict({"text": docs})
    tok = ds.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])
    total_in = sum(len(x) for x in tok["input_ids"])

    def group_texts(examples):
        concatenated = {k: sum(examples[k], []) for k in examples.keys()}
        total = len(concatenated["input_ids"])
        total = (total // block_size) * block_size
        result = {k: [t[i:i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = tok.map(group_texts, batched=True)
    kept = len(grouped) * block_size
    rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in grouped]
    return rows, {"tokens_in": total_in, "tokens_dropped": total_in - kept, "non_pad_fraction": 1.0}


def per_doc_rows(docs, tokenizer, block_size):
    eos = tokenizer.eos_token_id
    rows, total_in, kept = [], 0, 0
    for text in docs:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        total_in += len(ids)
        ids = ids[:block_size]
        kept += len(ids)
        rows.append({"input_ids": ids})
    return rows, {"tokens_in": total_in, "tokens_dropped": total_in - kept}


def per_doc_chunk_rows(docs, tokenizer, block_size):
    """(b') one document per row, long documents split into block-size rows: nothing dropped."""
    eos = tokenizer.eos_token_id
    rows, total_in = [], 0
    for text in docs:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        total_in += len(ids)
        rows.extend({"input_ids": ids[i:i + block_size]} for i in range(0, len(ids), block_size))
    return rows, {"tokens_in": total_in, "tokens_dropped": 0}


def pad_collator(tokenizer):
    pad = tokenizer.pad_token_id

    def collate(rows):
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), pad, dtype=torch.long)
        att = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
            att[i, :len(r["input_ids"])] = 1
        labels = ids.masked_fill(att == 0, -100)
        return {"input_ids": ids, "attention_mask": att, "labels": labels}
    return collate


def plain_collator(rows):
    ids = torch.tensor(np.array([r["input_ids"] for r in rows]), dtype=torch.long)
    return {"input_ids": ids, "labels": torch.tensor(np.array([r["labels"] for r in rows]), dtype=torch.long)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Arm:
    """One data layout under training: its own model copy, optimizer and batch stream."""

    def __init__(self, model_factory, rows, collator, useful_fn, *, batch_size, lr, seed, device, bf16):
        torch.manual_seed(seed)
        self.model = model_factory()
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.rows, self.collator, self.useful_fn = rows, collator, useful_fn
        self.order = list(range(len(rows)))
        random.Random(seed).shuffle(self.order)
        self.batch_size, self.device, self.bf16 = batch_size, device, bf16
        self.step_i = 0
        self.tokens = self.useful = 0
        self.seconds = 0.0
        self.loss = None

    def step(self, timed: bool) -> None:
        idx = [self.order[(self.step_i * self.batch_size + i) % len(self.order)] for i in range(self.batch_size)]
        picked = [self.rows[i] for i in idx]
        _sync(self.device)
        t0 = time.perf_counter()
        batch = self.collator(picked)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(**batch)
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.loss = out.loss.item()
        _sync(self.device)
        if timed:
            self.seconds += time.perf_counter() - t0
            self.tokens += batch["input_ids"].numel()
            self.useful += sum(self.useful_fn(r) for r in picked)
        self.step_i += 1


def interleaved(arms: dict, *, steps: int, warmup: int) -> None:
    """Round-robin one step of each arm at a time, so load from other processes on a shared
    machine slows every arm alike and the ratios stay meaningful."""
    for i in range(warmup + steps):
        for arm in arms.values():
            arm.step(timed=i >= warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/computing/train.jsonl.gz"))
    ap.add_argument("--docs", type=int, default=600, help="documents sampled from the corpus")
    ap.add_argument("--size", default="8m", help="scratch Llama preset")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs; very slow on CPUs without AMX)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from lmadapt.data.collators import CausalCollator
    from lmadapt.data.packing import build_blocks
    from lmadapt.models.presets import scratch_config
    from lmadapt.models.tokenizers import train_tokenizer

    docs = read_docs(args.data, args.docs, seed=0)
    tok_dir = Path(os.environ.get("LMADAPT_BENCH_CACHE", ".cache/bench")) / f"tok{args.vocab}"
    tokenizer = train_tokenizer(docs, kind="bpe", vocab_size=args.vocab, output_dir=str(tok_dir))
    config = scratch_config("llama", args.size, {}, tokenizer)
    config._attn_implementation = args.attn
    device = torch.device(args.device)

    def factory():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, attn_implementation=args.attn).to(device)

    def on_device(collate):
        return lambda rows: {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(rows).items()}

    L = args.block_size
    a_rows, a_acc = run_clm_blocks(docs, tokenizer, L)
    b_rows, b_acc = per_doc_rows(docs, tokenizer, L)
    b2_rows, b2_acc = per_doc_chunk_rows(docs, tokenizer, L)
    c_ds, c_acc = build_blocks(docs, tokenizer, block_size=L, mode="document", objective="causal", cache=False)
    c_rows = [c_ds[i] for i in range(len(c_ds))]

    n_params = sum(p.numel() for p in factory().parameters())
    print(f"model: llama {args.size} ({n_params/1e6:.1f}M params), {args.device}, {args.threads} thread(s), "
          f"attn {args.attn}{', bf16 autocast' if args.bf16 else ''}; {len(docs)} documents; block {L}, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    results = {}
    layouts = (
        ("a_run_clm_concat_chunk", a_rows, plain_collator, lambda r: len(r["input_ids"]), a_acc),
        ("b_one_doc_per_row_padded", b_rows, pad_collator(tokenizer), lambda r: len(r["input_ids"]), b_acc),
        ("b2_doc_chunks_per_row_padded", b2_rows, pad_collator(tokenizer), lambda r: len(r["input_ids"]), b2_acc),
        ("c_lmadapt_document_packing", c_rows, CausalCollator(mode="document"),
         lambda r: int(len(r["input_ids"]) - np.sum(r["is_padding"])), None),
    )
    arms = {name: Arm(factory, rows, on_device(collate), useful_fn, batch_size=args.batch_size, lr=3e-4, seed=0,
                      device=device, bf16=args.bf16)
            for name, rows, collate, useful_fn, _ in layouts}
    interleaved(arms, steps=args.steps, warmup=args.warmup)
    for name, _, _, _, acc in layouts:
        arm = arms[name]
        tps, useful, loss, secs = arm.tokens / arm.seconds, arm.useful / arm.seconds, arm.loss, arm.seconds
        if acc is None:
            acc = {"tokens_in": c_acc.tokens, "tokens_dropped": c_acc.tokens_dropped,
                   "non_pad_fraction": c_acc.non_pad_fraction}
        if name.startswith("b"):
            acc["non_pad_fraction"] = useful / tps
        results[name] = {"tokens_per_s": tps, "useful_tokens_per_s": useful, "final_loss": loss,
                         "timed_seconds": secs, **acc}
        print(f"  {name:<30} {tps:>9,.0f} tok/s  {useful:>9,.0f} useful tok/s  non-pad {acc['non_pad_fraction']:.1%}  "
              f"dropped {acc['tokens_dropped']:,} of {acc['tokens_in']:,} tokens", flush=True)
    a, b, b2, c = (results[k]["useful_tokens_per_s"] for k in results)
    ratios = {"lmadapt_vs_run_clm": c / a, "lmadapt_vs_padded_rows": c / b, "lmadapt_vs_padded_chunk_rows": c / b2}
    print(f"\nuseful tokens/s ratio  lmadapt / run_clm concat-chunk : {ratios['lmadapt_vs_run_clm']:.2f}x "
          f"(target >= 1.0; run_clm dropped {results['a_run_clm_concat_chunk']['tokens_dropped']:,} tokens, lmadapt 0)")
    print(f"useful tokens/s ratio  lmadapt / one-doc-per-row pad : {ratios['lmadapt_vs_padded_rows']:.2f}x (target >= 1.5; "
          f"it truncates, dropping {results['b_one_doc_per_row_padded']['tokens_dropped']:,} tokens)")
    print(f"useful tokens/s ratio  lmadapt / doc-chunks-per-row  : {ratios['lmadapt_vs_padded_chunk_rows']:.2f}x (no drop)")
    # Every arm pays about the same per token it computes; (b) wastes only its padding. So no packing
    # can beat (b) by more than 1 / (b's non-pad fraction) in useful tokens/s: that ceiling, not the
    # implementation, decides whether a >= 1.5x target is reachable on a given corpus.
    ratios["ceiling_vs_padded_rows"] = 1.0 / results["b_one_doc_per_row_padded"]["non_pad_fraction"]
    print(f"ceiling vs one-doc-per-row (1 / its non-pad fraction, equal cost per token): "
          f"{ratios['ceiling_vs_padded_rows']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()

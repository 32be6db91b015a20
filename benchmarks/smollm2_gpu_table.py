"""Tables of a SmolLM2 GPU run from its stage folders alone (metrics.json, DONE, logs.jsonl).

    python benchmarks/smollm2_gpu_table.py benchmarks/results/smollm2_gpu/run [MORE_RUN_DIRS ...]

Several run folders (e.g. two device sessions of the same recipe) give one table, each stage
labelled with its folder's name, and the test macro-F1 of each arm pooled over its distinct seeds:
a seed run again in another folder is a reproduction, listed but counted once.

For a run that stopped before `lmadapt run` wrote its rows (results.jsonl is written after the
parallel stages, see lmadapt/pipeline/jobs.py): finished fine-tunes give their dev and test scores,
an unfinished one its dev scores per epoch from logs.jsonl; the continued-pretraining stage its
held-out perplexity before and after, throughput and peak memory.
"""
import json
import statistics
import sys
from pathlib import Path

import yaml

from lmadapt.pipeline.compare import Stat, compare


def main(runs: list[Path]) -> None:
    stages = [d for run in runs for d in sorted((run / "stages").iterdir())]
    print("| run | stage | starts from | seed | status | wall s | peak GPU MB | dev macro-F1 by epoch | test macro-F1 | test acc |")
    print("|---|---|---|---:|---|---:|---:|---|---:|---:|")
    scores: dict[str, dict[str, dict[int, list[float]]]] = {"test": {}, "dev": {}}
    for d in stages:
        recipe = yaml.safe_load((d / "lmadapt_recipe.yaml").read_text())
        done = json.loads((d / "DONE").read_text()) if (d / "DONE").exists() else None
        metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").exists() else {}
        if recipe.get("task") is None:
            continue
        start = "dapt" if "pretrain-dapt" in recipe["model"]["path"] else "SmolLM2"
        curve = [r["eval_dev_macro_f1"] for r in map(json.loads, (d / "logs.jsonl").read_text().splitlines())
                 if "eval_dev_macro_f1" in r]
        test = metrics.get("test", {})
        arm = "ft_only" if start == "SmolLM2" else "dapt_ft"
        for split in scores if test else ():
            scores[split].setdefault(arm, {}).setdefault(recipe["train"]["seed"], []).append(metrics[split]["macro_f1"])
        print(f"| {d.parent.parent.name} | {d.name} | {start} | {recipe['train']['seed']} | {'done' if done else 'unfinished'} | "
              f"{done['wall_seconds'] if done else '—'} | {done.get('peak_gpu_mb', '—') if done else '—'} | "
              + " / ".join(f"{v:.3f}" for v in curve) + " | "
              + (f"{test['macro_f1']:.3f} | {test['accuracy']:.3f} |" if test else "— | — |"))
    for split, by_arm in scores.items():
        # dev also chose each fine-tune's best epoch, so its scores lean optimistic for every arm
        print(f"\n{split} macro-F1{' (the split that chose the best epoch)' if split == 'dev' else ''}:")
        for arm, by_seed in by_arm.items():
            vals = [v[0] for _, v in sorted(by_seed.items())]
            sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            print(f"  {arm}: {statistics.mean(vals):.3f} ± {sd:.3f} (n={len(vals)}: "
                  + ", ".join(f"{v:.3f}" for v in vals) + ")")
            for seed, v in sorted(by_seed.items()):
                if len(v) > 1:
                    print(f"    seed {seed} ran {len(v)} times: " + " / ".join(f"{x:.3f}" for x in v))
        if by_arm.get("ft_only") and by_arm.get("dapt_ft"):
            # the pipeline report's rule (lmadapt/pipeline/compare.py): k = 2 pooled standard errors
            c = compare(*(Stat([v[0] for _, v in sorted(by_arm[a].items())], [f"{a}{k}" for k in sorted(by_arm[a])])
                          for a in ("dapt_ft", "ft_only")), 2.0)
            print(f"  dapt_ft - ft_only: {c['diff']:+.3f}, {c['verdict']}"
                  + (f" (threshold {c['threshold']:.3f})" if "threshold" in c else ""))
    for d in stages:
        if not d.name.startswith("pretrain-"):
            continue
        m = json.loads((d / "metrics.json").read_text())
        done = json.loads((d / "DONE").read_text())
        print(f"\n{d.name}: {m['train']['tokens_seen']:,} tokens in {m['train']['steps']} steps, "
              f"{m['train']['train_seconds']:.0f} s training ({m['train']['tokens_per_second']:,.0f} tokens/s), "
              f"stage {done['wall_seconds']:.0f} s, peak GPU {done.get('peak_gpu_mb')} MB")
        for name, h in m["heldout"].items():
            print(f"  {name}: perplexity {h['before']['perplexity']:.2f} -> {h['after']['perplexity']:.2f} "
                  f"(x{h['perplexity_ratio']:.2f}, {h['before']['tokens']:,} tokens)")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]] or [Path("benchmarks/results/smollm2_gpu/run")])

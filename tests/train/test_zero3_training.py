"""DeepSpeed ZeRO-3 (``accelerate launch --use_deepspeed``) on two CPU processes against one process.

DeepSpeed's CPU accelerator runs ZeRO-3 with gloo, so the partitioned path is tested here, not only
on a GPU. One launch runs, in one process each (as ``lmadapt run`` does), the stages the FSDP test
runs: continued pretraining of a tiny Llama (with checkpoints), LoRA with activation checkpointing,
MLM of a tiny BERT, a classification fine-tune, a run killed after its checkpoint and resumed, a
merge and ``evaluate``. The config sets ``stage3_param_persistence_threshold: 0`` so that even these
tiny models' parameters are all partitioned (by default DeepSpeed keeps parameters under 100k
elements whole on every process). The one-process reference runs unsharded in the test process with
the same global batch. Stated tolerance: 1e-5 absolute on every weight, logged loss and score.
"""

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import accelerate_launch
from test_fsdp_training import STAGES

pytest.importorskip("deepspeed", reason="DeepSpeed is installed by scripts/setup.sh test")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo two-process runs on Linux")

DS_CONFIG = {
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
}

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/train"]
    from test_fsdp_training import merge_and_evaluate, pretrain_recipe, run_all
    from lmadapt.config import PretrainConfig, load_recipe
    from lmadapt.runtime import dist
    import lmadapt.stages.pretrain as pretrain_stage
    from lmadapt.stages.pretrain import run_pretrain

    ws = Path(sys.argv[2])
    # what the parameters are when each pretraining run saves: partitioned, not left whole by scoring
    seen, save = [], pretrain_stage._save
    def recorded(*args, **kwargs):
        params = list(args[1].parameters())
        seen.append({"params": len(params), "zero3": sum(hasattr(p, "ds_id") for p in params),
                     "whole": sum(p.numel() > 0 for p in params)})
        return save(*args, **kwargs)
    pretrain_stage._save = recorded
    out = run_all(ws, 2, "none", tag="z3")
    # killed after its checkpoint at step 3 (a run that stops there), then resumed to step 6
    run_pretrain(load_recipe(PretrainConfig, data=pretrain_recipe(ws, "resumed", 2, save_every=3, max_steps=3)))
    out["resumed"] = run_pretrain(load_recipe(PretrainConfig, data=pretrain_recipe(
        ws, "resumed", 2, save_every=3, resume=True)))
    out.update(merge_and_evaluate(ws, "none", tag="z3", source="z3"))
    out["saves"] = seen
    if dist.is_main_process():
        (ws / "z3.json").write_text(json.dumps(out, default=str))
    dist.finish()
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from test_fsdp_training import make_workspace, one_process_reference

    ws = tmp_path_factory.mktemp("zero3")
    make_workspace(ws)
    (ws / "ds.json").write_text(json.dumps(DS_CONFIG))
    script = ws / "z3.py"
    script.write_text(SCRIPT)
    proc = accelerate_launch(
        "--use_deepspeed",
        "--deepspeed_config_file",
        str(ws / "ds.json"),
        "--mixed_precision",
        "no",
        str(script),
        str(Path(__file__).parents[1]),
        str(ws),
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    one = one_process_reference(ws, source="z3")
    yield ws, json.loads((ws / "z3.json").read_text()), one, proc
    shutil.rmtree(ws, ignore_errors=True)


@pytest.mark.parametrize("name, weight_file", STAGES)
def test_zero3_stages_train_as_one_process(runs, name, weight_file):
    """Every stage after the first too: each loads its model whole (a Trainer's DeepSpeed config left
    registered would build it partitioned, and scoring before training would fail on it)."""
    from test_fsdp_training import assert_trains_as_one_process

    ws, z3, one, _ = runs
    assert_trains_as_one_process(ws, z3, one, name, weight_file, "z3")


def test_parameters_stay_partitioned_through_scoring_to_the_save(runs):
    """Held-out scoring after training leaves every parameter partitioned (released through the
    engine), and the streamed save still writes whole tensors (checked above against one process)."""
    _, z3, _, _ = runs
    # causal, LoRA, MLM, the resume's two runs
    assert len(z3["saves"]) == 5
    for save in z3["saves"]:
        assert save["params"] == save["zero3"] > 0
        assert save["whole"] == 0


def test_kill_after_checkpoint_and_resume_matches_the_uninterrupted_run(runs):
    """DeepSpeed writes its own checkpoint layout (each process's partitions under global_stepN/);
    it is recognised as complete and resumed from, not set aside as having no weights."""
    from test_fsdp_training import logged_losses, weights

    ws, z3, *_ = runs
    assert z3["resumed"]["train"]["resumed_from"].endswith("checkpoint-3")
    step = ws / "resumed" / "checkpoints" / "checkpoint-3" / "global_step3"
    assert len(list(step.glob("*model_states.pt"))) == len(list(step.glob("*optim_states.pt"))) == 2
    assert not list((ws / "resumed" / "checkpoints").glob("incomplete-*"))
    a, b = weights(ws / "resumed"), weights(ws / "causal_z3")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert logged_losses(ws / "resumed")[-3:] == logged_losses(ws / "causal_z3")[-3:]


def test_merge_and_evaluate_under_zero3_give_the_one_process_results(runs):
    from test_fsdp_training import assert_same_merge_and_evaluate

    ws, z3, one, _ = runs
    assert_same_merge_and_evaluate(ws, z3, one, "z3")

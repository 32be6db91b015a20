"""`lmadapt predict`: run a fine-tuned output folder on new records (a file, or one text).

    predict_file("runs/ft", "new.jsonl", "new.pred.jsonl", batch_size=32)   # -> {"records": 1000, ...}
    predict_file("runs/ft", text="a review to classify")                     # -> {"text": ..., "prediction": {...}}

The folder's ``lmadapt_meta.json`` names the task and ``lmadapt_recipe.yaml`` holds its settings
(fields, max_length, thresholds); the task's ``predict`` does the work. Each output line is the
input record plus what the task adds (classification: ``prediction`` with the label and its
probability and the top-k; multi-label: labels over the threshold with all probabilities;
regression: the value). The output file is written atomically: a temp file renamed at the end.
Under ``torchrun -m lmadapt.cli predict ...`` the processes share the records, one GPU each.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config.base import ConfigError, from_dict, read_yaml
from ..config.finetune import ADAPTER_FILE, FinetuneConfig, upgrade_saved_recipe
from ..config.hub import is_hub_spec
from ..runtime.folders import check_output_file
from ..models.load import reading_weights
from ..tasks import TASKS
from ..tasks.labeled_io import read_records
from ..runtime.dist import is_main_process, map_split, process_device, world_size
from ..runtime.outputs import META_FILE, RECIPE_FILE, AtomicFile, read_meta

# Field that a single --text fills, per task: (recipe section, key). QA needs a JSON record.
SINGLE_TEXT_FIELD = {
    "classification": ("data", "text_field"),
    "extraction": ("extraction", "text_field"),
    "instruction": ("instruction", "prompt_field"),
}


@dataclasses.dataclass
class Predictor:
    model: Any
    tokenizer: Any
    task: Any
    cfg: FinetuneConfig


def load_predictor(
    model_dir: str | Path,
    *,
    batch_size: int | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    **options: Any,
) -> Predictor:
    """Model, tokenizer, task and recipe of a fine-tuned folder. ``options`` override keys of the
    task's recipe section (e.g. generation: max_new_tokens, greedy, temperature, top_p).

    ``trust_remote_code`` comes from the caller only (``--trust-remote-code``), never from the
    folder's own recipe: a downloaded folder must not be able to run its own Python."""
    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    if meta.get("stage") != "finetune" or not (model_dir / RECIPE_FILE).is_file():
        raise ConfigError(
            f"{model_dir}: not a `lmadapt finetune` output folder (no {META_FILE} with stage "
            f"'finetune', or no {RECIPE_FILE})"
        )
    cfg = from_dict(FinetuneConfig, upgrade_saved_recipe(read_yaml(model_dir / RECIPE_FILE)))
    cfg.model.trust_remote_code = bool(trust_remote_code)
    task = TASKS[meta.get("task", cfg.task.type)]
    cfg = _with_options(cfg, task.name, batch_size, options)
    if hasattr(task, "load_trained"):
        model, tokenizer = task.load_trained(model_dir, cfg)
    else:
        model, tokenizer = load_finetuned(model_dir, meta, cfg)
    model.to(device or process_device()).eval()
    return Predictor(model, tokenizer, task, cfg)


def load_finetuned(model_dir: Path, meta: dict, cfg: FinetuneConfig):
    """The model class named in config.json; an adapter folder is loaded onto its base and merged."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=cfg.model.trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ConfigError(
            f"{model_dir}: the model ships its own Python code (config.json auto_map); it runs only "
            "if you pass --trust-remote-code, and only do so for a folder you trust"
        ) from None
    arch = (config.architectures or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise ConfigError(f"{model_dir}/config.json: unknown model class {arch!r}")
    kw = {"trust_remote_code": True} if cfg.model.trust_remote_code else {}
    if (model_dir / ADAPTER_FILE).is_file():
        from peft import PeftModel

        base = meta.get("lora_base")
        if not base:
            raise ConfigError(f"{model_dir}: adapter folder without lora_base in {META_FILE}")
        with reading_weights(f"{model_dir} (or its base {base})"):
            model = cls.from_pretrained(base, config=config, **kw)
            model = PeftModel.from_pretrained(model, str(model_dir)).merge_and_unload()
    else:
        with reading_weights(model_dir):
            model = cls.from_pretrained(model_dir, **kw)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.model.trust_remote_code)
    return model, tokenizer


GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "greedy")


def _with_options(cfg: FinetuneConfig, task_name: str, batch_size: int | None, options: dict) -> FinetuneConfig:
    """Apply predict-time options to the recipe: batch size everywhere it applies; other keys go to
    the task's section (classification: ``task``). Generation options are ignored by tasks that do
    not generate; ``temperature: 0`` means greedy decoding."""
    section = getattr(cfg, task_name, None) if task_name != "classification" else None
    if batch_size is not None:
        cfg.train.eval_batch_size = batch_size
        if section is not None and hasattr(section, "eval_batch_size"):
            section = dataclasses.replace(section, eval_batch_size=batch_size)
    target = section if section is not None else cfg.task
    options = {k: v for k, v in options.items() if v is not None}
    if options.get("temperature") is not None and hasattr(target, "greedy"):
        temp = options.pop("temperature")
        options["greedy"] = temp == 0
        if temp > 0:
            options["temperature"] = temp
    for key in list(options):
        if not hasattr(target, key):
            if key in GENERATION_KEYS:
                options.pop(key)  # e.g. the CLI's generation defaults for a classifier
                continue
            valid = [f.name for f in dataclasses.fields(target)]
            raise ConfigError(
                f"predict option {key!r} does not apply to task {task_name!r} (options: {', '.join(valid)})"
            )
    if section is not None:
        setattr(cfg, task_name, dataclasses.replace(section, **options))
    elif options:
        cfg.task = dataclasses.replace(cfg.task, **options)
    return cfg


def predict_text(p: Predictor, text: str) -> dict:
    """One answer: ``text`` fills the task's input field (a JSON object string is taken as a whole record)."""
    record = None
    if text.lstrip().startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
    if not isinstance(record, dict):
        where = SINGLE_TEXT_FIELD.get(p.task.name)
        if where is None:
            raise ConfigError(f"task {p.task.name!r} needs a whole record; pass --text as a JSON object")
        section, key = where
        record = {getattr(getattr(p.cfg, section), key): text}
    return p.task.predict(p.model, p.tokenizer, [record], p.cfg)[0]


def predict_file(
    model_dir: str | Path,
    input_path: str | Path | None = None,
    output_path: str | Path | None = None,
    *,
    batch_size: int = 16,
    text: str | None = None,
    predictor: Predictor | None = None,
    trust_remote_code: bool = False,
    **generation: Any,
) -> dict:
    """Predict every record of ``input_path`` (.jsonl/.csv/.tsv/.parquet, .gz) into JSONL at
    ``output_path`` (default: ``<input stem>.predictions.jsonl`` beside the input), or, with
    ``text``, return the single prediction. Returns a summary for a file."""
    if output_path is not None:
        check_output_file(output_path)
    p = predictor or load_predictor(model_dir, batch_size=batch_size, trust_remote_code=trust_remote_code, **generation)
    if text is not None:
        return predict_text(p, text)
    if input_path is None:
        raise ConfigError("predict: give an input file or --text")
    if output_path is None and is_hub_spec(str(input_path)):
        raise ConfigError(f"predict: {input_path} is a hub split; give an output file")
    source = str(input_path)  # a file, or a hub split (hub:owner/name[subset]:split)
    input_path = Path(input_path)
    if output_path is None:
        stem = input_path.name.split(".")[0]
        output_path = input_path.with_name(f"{stem}.predictions.jsonl")
    output_path = Path(output_path)
    fields = p.task.text_fields(p.cfg) if hasattr(p.task, "text_fields") else []
    records = [ex.fields for ex in read_records(source, fields_required=fields, text_fields=fields, on_error="raise")]
    t0 = time.time()
    # Under torchrun each process predicts its share of every chunk on its own GPU; the main
    # process alone writes the file, in input order.
    main, chunk = is_main_process(), max(1, batch_size) * 8 * world_size()
    fh, out = None, None
    if main:
        out = AtomicFile(output_path)
        fh = open(out.tmp, "w", encoding="utf-8")
    try:
        with tqdm(
            total=len(records), desc="predict", unit="rec", dynamic_ncols=True, mininterval=1.0, disable=not main
        ) as bar:
            for b in range(0, len(records), chunk):
                part = records[b : b + chunk]
                rows, _ = map_split(lambda share: (p.task.predict(p.model, p.tokenizer, share, p.cfg), 0), part)
                if fh is not None:
                    fh.writelines(json.dumps(row, ensure_ascii=False, default=_plain) + "\n" for row in rows)
                bar.update(len(part))
        if fh is not None:
            fh.close()
            out.commit()
    except BaseException:
        if fh is not None:
            fh.close()
            out.discard()
        raise
    return {
        "input": str(input_path),
        "output": str(output_path),
        "records": len(records),
        "seconds": round(time.time() - t0, 2),
        "task": p.task.name,
        "processes": world_size(),
    }


def _plain(x):
    """numpy scalars/arrays and other stragglers in a prediction row -> JSON values."""
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


__all__ = ["predict_file", "predict_text", "load_predictor", "load_finetuned", "Predictor"]

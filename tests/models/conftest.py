"""Shared fixtures for the model tests: tiny trained tokenizers, one torch thread."""

from __future__ import annotations

import pytest

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Patients with chronic kidney disease often present with anaemia and fatigue.",
    "A transformer attends to every previous token; an encoder attends to all tokens.",
    "Ölfeld café №5: naïve façade, 3.14 + 2 = 5.14!",
    "Tokenizers split words into sub-word units such as 'token', '##izer' and 'Ġsplit'.",
] * 40 + [f"Line number {i} of the small training corpus, with value {i * 7}." for i in range(200)]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slower tests (real model files, seconds to a minute)")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on shared CPUs: one thread is ~10x faster than oversubscribed ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus():
    return list(CORPUS)


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory):
    from lmadapt.models.tokenizers import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "bpe"
    train_tokenizer(CORPUS, kind="bpe", vocab_size=512, output_dir=str(out))
    return str(out)


@pytest.fixture(scope="session")
def wordpiece_dir(tmp_path_factory):
    from lmadapt.models.tokenizers import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "wordpiece"
    train_tokenizer(CORPUS, kind="wordpiece", vocab_size=512, output_dir=str(out))
    return str(out)


@pytest.fixture(scope="session")
def tokenizer_dirs(bpe_dir, wordpiece_dir):
    """arch -> tokenizer folder."""
    return {"llama": bpe_dir, "gpt2": bpe_dir, "bert": wordpiece_dir}


@pytest.fixture
def scratch(tokenizer_dirs):
    """scratch(arch, size="1m", **kw) -> LoadedModel of a fresh model."""
    from lmadapt.config.model import ModelConfig
    from lmadapt.models.load import load_model

    def make(arch, size="1m", seed=42, **kw):
        return load_model(
            ModelConfig(init="scratch", arch=arch, size=size, tokenizer=tokenizer_dirs[arch], **kw), seed=seed
        )

    return make

"""Tiny tokenizers and models for tests (CPU, seconds).

Import from a test file with::

    from helpers import tiny_bpe_tokenizer, tiny_llama      # tests/ must be on sys.path

Tokenizers are trained with the ``tokenizers`` library on :data:`CORPUS` (deterministic) and wrapped
in ``PreTrainedTokenizerFast``; passing a folder also saves them there (``save_pretrained``) so a
test can load them back like a real checkpoint. Models are randomly initialised with a fixed seed,
put in eval mode and sized to the tokenizer (``len(tokenizer)``).
"""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
from pathlib import Path

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Patients with chronic kidney disease often require dialysis.",
    "The defendant filed a motion to dismiss the complaint.",
    "Gradient descent minimises the loss by following the negative gradient.",
    "Transformers use self-attention to mix information across tokens.",
    "She sells seashells by the seashore on sunny afternoons.",
    "The central bank raised interest rates by a quarter point.",
    "Photosynthesis converts light energy into chemical energy.",
    "In 1969, astronauts landed on the Moon for the first time.",
    "The recipe calls for two cups of flour and three eggs.",
    "Electrons occupy orbitals according to the Pauli exclusion principle.",
    "Our quarterly revenue grew 12% compared with last year.",
    "The court held that the contract was unenforceable.",
    "Whole-word masking hides every piece of a word together.",
    "Tokenizers split text into subword units such as prefixes and suffixes.",
    "It was raining heavily, so the match was postponed until Monday.",
    "The mitochondria is the powerhouse of the cell.",
    "Please restart the server after installing the security update.",
    "He couldn't believe how quickly the semester had passed.",
    "The orchestra performed Beethoven's ninth symphony last night.",
    "Antibiotics are ineffective against viral infections.",
    "Tax deductions reduce taxable income; credits reduce the tax itself.",
    "The algorithm runs in O(n log n) time on average.",
    "Birds migrate south when the temperature drops in autumn.",
    "The museum's new exhibition features impressionist paintings.",
    "Unsupervised pretraining adapts a language model to a new domain.",
    "A hypothesis must be falsifiable to be scientific.",
    "The patient's blood pressure was 120/80 mmHg at admission.",
    "Shareholders approved the merger at the annual general meeting.",
    "Rivers carve canyons over millions of years of erosion.",
    "The compiler reported an undefined reference to main.",
    "Children learn languages remarkably quickly through immersion.",
    "The lease terminates automatically upon thirty days' notice.",
    "Neural networks approximate functions by composing nonlinear layers.",
    "Fresh bread smells wonderful early in the morning.",
    "The telescope captured images of a distant spiral galaxy.",
    "Inflation erodes the purchasing power of savings.",
    "Vaccination schedules differ between countries and age groups.",
    "The committee will review the proposal next Thursday.",
    "Quantum computers exploit superposition and entanglement.",
    "Dropout randomly zeroes activations during training.",
    "The novel's protagonist returns home after twenty years abroad.",
    "Plaintiffs must prove damages by a preponderance of the evidence.",
    "Wind turbines generate electricity without burning fuel.",
    "Seventy-two percent of respondents preferred the new design.",
    "The glacier retreated several kilometres over the last century.",
    "Batch normalization stabilises the distribution of activations.",
    "Our hotel overlooks the harbour and the old lighthouse.",
    "Ünïcödé text, emojis 🙂 and tabs\tshould tokenize without errors.",
    "Documents are packed into blocks without dropping a single token.",
    "Enzymes lower the activation energy of biochemical reactions.",
]

BPE_SPECIALS = ["<|endoftext|>", "<pad>"]
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@functools.lru_cache(maxsize=None)
def _bpe_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BPE_SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok.to_str()


# The default tiny WordPiece, trained once on CORPUS and committed. The tokenizers library's
# WordPiece trainer picks among tied candidates in hash order, so training it in each test process
# gave a different vocabulary every run, and thresholds on tiny models flaked with some draws.
# To regenerate: write _train_wordpiece_json(400) to this file.
WORDPIECE_FIXTURE = Path(__file__).parent / "fixtures" / "tiny_wordpiece_400.json"


@functools.lru_cache(maxsize=None)
def _wordpiece_json(vocab_size: int) -> str:
    if vocab_size == 400:
        return WORDPIECE_FIXTURE.read_text(encoding="utf-8")
    return _train_wordpiece_json(vocab_size)


def _train_wordpiece_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=WORDPIECE_SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok.to_str()


def _wrap(tokenizer_json: str, folder, **special):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), **special)
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(folder))
    return tok


def tiny_bpe_tokenizer(folder=None, vocab_size: int = 400):
    """Byte-level BPE (GPT-2 style, vocab ~400): ``<|endoftext|>`` is bos/eos/unk, ``<pad>`` is pad.

    No sep/cls/mask token. Byte-level, so any text (emoji, accents) encodes without unknowns."""
    return _wrap(
        _bpe_json(vocab_size),
        folder,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )


def tiny_wordpiece_tokenizer(folder=None, vocab_size: int = 400):
    """Lower-cased BERT-style WordPiece (vocab ~400) with ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0-4).

    Its post-processor adds ``[CLS] ... [SEP]`` like BERT (only when add_special_tokens=True)."""
    return _wrap(
        _wordpiece_json(vocab_size),
        folder,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _seeded(build):
    torch.manual_seed(0)
    model = build()
    return model.eval()


def tiny_llama(vocab_size: int, attn_implementation: str = "sdpa", **overrides):
    """2-layer Llama (hidden 32, GQA 4 query / 2 kv heads), random weights, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    cfg = LlamaConfig(**kw)
    cfg._attn_implementation = attn_implementation
    return _seeded(lambda: LlamaForCausalLM(cfg))


def tiny_gpt2(vocab_size: int, attn_implementation: str = "sdpa", **overrides):
    """2-layer GPT-2 (n_embd 32, 4 heads, learned absolute positions), random weights, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    kw = dict(
        vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=None, eos_token_id=None
    )
    kw.update(overrides)
    cfg = GPT2Config(**kw)
    cfg._attn_implementation = attn_implementation
    return _seeded(lambda: GPT2LMHeadModel(cfg))


def tiny_bert(vocab_size: int, attn_implementation: str = "sdpa", **overrides):
    """2-layer BERT masked LM (hidden 32, 4 heads), random weights, eval mode."""
    from transformers import BertConfig, BertForMaskedLM

    kw = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    kw.update(overrides)
    cfg = BertConfig(**kw)
    cfg._attn_implementation = attn_implementation
    return _seeded(lambda: BertForMaskedLM(cfg))


def torchrun(*args: str, procs: int = 2, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node PROCS ARGS...`` from the repository root on
    CPU (gloo, one thread per process, a random port), output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(procs),
        "--master_port",
        str(29700 + random.randint(0, 800)),
        *args,
    ]
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1]
    )


def accelerate_launch(*args: str, procs: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    """``accelerate launch --num_processes PROCS ARGS...`` on CPU, as :func:`torchrun` runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(procs), "--num_machines", "1"]
    cmd += ["--main_process_port", str(29700 + random.randint(0, 800)), *args]
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1]
    )


def base_and_adapted(d: Path, noise: float = 0.05) -> dict:
    """A tiny Llama base folder and an 'adapted' folder whose weights are the base's plus noise, recording
    the base as its parent (what `lmadapt merge` reads), with held-out domain/general JSONL sets."""
    import json

    from lmadapt.runtime.outputs import write_meta

    tok = tiny_bpe_tokenizer(d / "base")
    torch.manual_seed(0)
    base = tiny_llama(len(tok))
    base.save_pretrained(d / "base")
    adapted = tiny_llama(len(tok))
    with torch.no_grad():
        for pa, pb in zip(adapted.parameters(), base.parameters()):
            pa.copy_(pb + noise * torch.randn_like(pb))
    adapted.save_pretrained(d / "adapted")
    tok.save_pretrained(d / "adapted")
    write_meta(d / "adapted", stage="pretrain", objective="causal", parent=str(d / "base"))
    sets = {}
    for name, texts in (("domain", CORPUS[:6]), ("general", CORPUS[6:12])):
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        sets[name] = str(d / f"{name}.jsonl")
    return {"dir": d, "base": d / "base", "adapted": d / "adapted", "sets": sets, "tok": tok}

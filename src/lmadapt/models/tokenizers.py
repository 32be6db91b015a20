"""Train a tokenizer for a model built from scratch (HF ``tokenizers``, saved as a transformers folder).

    tok = train_tokenizer(texts, kind="bpe", vocab_size=8000, output_dir="tok")        # causal models
    tok = train_tokenizer(texts, kind="wordpiece", vocab_size=8000, output_dir="tok")  # BERT-style
    AutoTokenizer.from_pretrained("tok")                                               # loads it back

* ``bpe``: byte-level BPE (GPT-2 style, no unknown tokens possible). ``<|endoftext|>`` is bos, eos
  and unk; ``<pad>`` is the pad token. Nothing is added around a text: packing appends EOS itself.
* ``wordpiece``: BERT pre-tokenisation (whitespace + punctuation), cased (``lowercase=True`` to
  lowercase), specials ``[PAD] [UNK] [CLS] [SEP] [MASK]``, and a post-processor that gives
  ``[CLS] a [SEP]`` and ``[CLS] a [SEP] b [SEP]`` with token type ids 0/1.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from lmadapt.config.base import ConfigError
from lmadapt.runtime.folders import check_output_folder, write_folder

BPE_SPECIALS = {"eos": "<|endoftext|>", "pad": "<pad>"}
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        if not isinstance(text, str):
            raise ConfigError(f"train_tokenizer: texts must be strings, got {type(text).__name__}")
        batch.append(text)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _bpe(vocab_size: int, min_frequency: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BPE_SPECIALS["eos"], BPE_SPECIALS["pad"]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def _wordpiece(vocab_size: int, min_frequency: int, lowercase: bool):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None if lowercase else False, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(WORDPIECE_SPECIALS), show_progress=False
    )
    return tok, trainer


def train_tokenizer(
    texts: Iterable[str],
    *,
    kind: str,
    vocab_size: int,
    output_dir: str,
    model_max_length: int = 2048,
    min_frequency: int = 2,
    lowercase: bool = False,
    overwrite: bool = False,
):
    """Train a ``bpe`` or ``wordpiece`` tokenizer on ``texts`` and save it to ``output_dir``.

    Returns the ``PreTrainedTokenizerFast`` as reloaded by ``AutoTokenizer.from_pretrained``. The
    folder is written to a temporary sibling first and renamed, so a crash never leaves half a
    tokenizer behind. An existing ``output_dir`` is replaced only if lmadapt wrote all of it; a
    folder with other files is refused unless ``overwrite`` (then only the tokenizer files are
    replaced): see :mod:`lmadapt.runtime.folders`.
    """
    from tokenizers import processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if kind not in ("bpe", "wordpiece"):
        raise ConfigError(f"tokenizer kind: {kind!r} is not one of 'bpe', 'wordpiece'")
    if vocab_size < 300 and kind == "bpe":
        raise ConfigError(f"vocab_size: byte-level BPE needs at least 300 (256 bytes + specials), got {vocab_size}")
    if vocab_size < len(WORDPIECE_SPECIALS) + 1:
        raise ConfigError(f"vocab_size: too small ({vocab_size})")
    check_output_folder(output_dir, overwrite=overwrite)  # refuse before training, not after

    if kind == "bpe":
        tok, trainer = _bpe(vocab_size, min_frequency)
    else:
        tok, trainer = _wordpiece(vocab_size, min_frequency, lowercase)
    n_texts = 0

    def counted():
        nonlocal n_texts
        for batch in _batches(texts):
            n_texts += len(batch)
            yield batch

    tok.train_from_iterator(counted(), trainer=trainer)
    if n_texts == 0:
        raise ConfigError("train_tokenizer: no training text")

    if kind == "bpe":
        eos, pad = BPE_SPECIALS["eos"], BPE_SPECIALS["pad"]
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=eos,
            eos_token=eos,
            unk_token=eos,
            pad_token=pad,
            model_max_length=model_max_length,
            padding_side="right",
            clean_up_tokenization_spaces=False,
        )
    else:
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=model_max_length,
            padding_side="right",
            clean_up_tokenization_spaces=False,
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )

    out = write_folder(output_dir, fast.save_pretrained, overwrite=overwrite)
    return AutoTokenizer.from_pretrained(str(out))

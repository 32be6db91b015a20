"""Embedding parameters in param groups of their own (vocab.embedding_lr), found by shape under LoRA too."""

import torch
from transformers import TrainingArguments

from helpers import tiny_llama
from lmadapt.train.embedding_groups import EmbeddingLRTrainer, embedding_params


def test_embedding_lr_groups(tmp_path):
    model = tiny_llama(300)
    params = embedding_params(model, 300)
    assert {id(p) for p in params} == {
        id(model.get_input_embeddings().weight),
        id(model.get_output_embeddings().weight),
    }
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-4, weight_decay=0.01, report_to="none", use_cpu=True
    )
    trainer = EmbeddingLRTrainer(model=model, args=args, embedding_lr=3e-3, embedding_params=params)
    opt = trainer.create_optimizer()
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert len(by_id) == sum(1 for p in model.parameters() if p.requires_grad)  # every parameter, once
    for p in model.parameters():
        assert by_id[id(p)]["lr"] == (3e-3 if any(p is q for q in params) else 1e-4)
    # weight decay kept from the Trainer's own split (embeddings decay, norms do not)
    assert by_id[id(params[0])]["weight_decay"] == 0.01
    assert by_id[id(model.model.norm.weight)]["weight_decay"] == 0.0


def test_lora_trainable_copies_are_found(tmp_path):
    from lmadapt.config.model import LoraConfig
    from lmadapt.models.lora import apply_lora

    model = apply_lora(tiny_llama(300), LoraConfig(enabled=True, r=2, train_embeddings=True), "causal")
    params = embedding_params(model, 300)
    assert len(params) == 2 and all(p.requires_grad for p in params)
    assert all(
        torch.equal(a, b)
        for a, b in zip(params, (model.get_input_embeddings().weight, model.get_output_embeddings().weight))
    )

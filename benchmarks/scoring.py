"""Stage-2 scoring throughput: ``selectmoe.stages.scoring.compute_router_data`` against a plain
OLMoE
forward, in one run.

A synthetic chat pool (``--n-examples`` conversations whose encoded lengths spread uniformly over
``--min-tokens`` .. ``--max-tokens``, some with a system turn) is written as LESS-format JSONL,
read back with ``selectmoe.data.pool.load_pool`` and encoded with ``encode_examples`` (chat
template,
``full_sequence_prediction=True``) by a byte-level BPE tokenizer trained here on pseudo-words
(``--vocab-size``, default 2,000). The models have the OLMoE-shaped config of
``benchmarks/model_forward.py`` (64 experts, top-8, smaller dimensions); the Select-MoE model holds
the OLMoE weights plus fresh quality gates.

Timed passes over the whole pool, each after a warm-up of a few batches:

1. reference: ``OlmoeForCausalLM`` (transformers, experts implementation as it loads) forward
   with ``output_router_logits=True`` over batches in file order (unsorted), same batch size,
   under ``torch.inference_mode``, outputs dropped;
2. (unless ``--no-sorted-reference``) the same OLMoE forward over the length-sorted batches that
   ``compute_router_data`` makes (the batching's share of the ratio), and the OLMoE decoder stack
   alone (no LM head, ``use_cache=False``, Select-MoE's experts implementation) over them, which is
   what ``compute_router_data`` runs less the quality gate and the per-sample means;
3. ``compute_router_data`` on the Select-MoE model (length-sorted batches, per-sample means);
4. ``compute_example_statistics`` with the LM statistics (the pool encoded with SFT labels: the
   LM head runs on the answer tokens only, in chunks), what the score stage runs by default, and
   ``answer_alone_losses``, the second pass that only the ``ifd`` score needs. The LM head's
   share of the work grows with ``vocab / (hidden * layers)``: compare ``--vocab-size`` runs.

Tokens/s counts real tokens; the padding share is padded positions / all positions of the
batches. Then ``compute_router_data`` with batch size 1 and with the benchmark's batch size must
agree within 1e-5 in float32 on ``--check-samples`` examples spread over the lengths (and, when the
run is in float32, with the timed run's rows of those examples).

Usage::

    python benchmarks/scoring.py                                 # CPU, float32, 2 threads
    python benchmarks/scoring.py --device cuda --dtype bfloat16 --no-write

The results replace the section between ``<!-- scoring:begin -->`` and ``<!-- scoring:end -->``
of the output file (``scoring-cuda`` for ``--device cuda``; other sections are kept).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from results_md import machine_line, replace_section, section_markers, synchronize
from transformers import OlmoeConfig, OlmoeForCausalLM

from selectmoe import SelectMoeConfig, SelectMoeForCausalLM
from selectmoe.data.encoding import (
    collate_encoded,
    encode_examples,
    length_sorted_batches,
    pad_token_id_of,
)
from selectmoe.data.pool import CHAT_TAGS, load_pool
from selectmoe.stages.scoring import (
    answer_alone_losses,
    compute_example_statistics,
    compute_router_data,
)

TOLERANCE = 1e-5
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>"]


# ----------------------------------------------------------------------------------------------
# synthetic tokenizer and pool


def pseudo_words(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct pronounceable pseudo-words of 1-4 syllables."""
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w"]
    onsets += ["br", "ch", "cl", "dr", "fl", "gr", "pl", "sh", "st", "th", "tr"]
    nuclei = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "oo", "ou"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "ng", "st"]
    words: set[str] = set()
    while len(words) < n:
        syllables = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        words.add(
            "".join(
                rng.choice(onsets) + rng.choice(nuclei) + rng.choice(codas)
                for _ in range(syllables)
            )
        )
    return sorted(words)


class TextSource:
    """Zipf-distributed pseudo-word text with some punctuation and digits."""

    def __init__(self, seed: int, n_words: int = 4000) -> None:
        rng = random.Random(seed)
        self.words = pseudo_words(n_words, rng)
        rng.shuffle(self.words)
        self.weights = [1.0 / (rank + 1) for rank in range(len(self.words))]

    def text(self, n_words: int, rng: random.Random) -> str:
        picked = rng.choices(self.words, weights=self.weights, k=max(1, n_words))
        out = []
        for index, word in enumerate(picked):
            out.append(word)
            if rng.random() < 0.03:
                out.append(str(rng.randint(0, 2025)))
            if index % 12 == 11:
                out[-1] += rng.choice([".", ",", "?", ";"])
        return " ".join(out)


def build_tokenizer(vocab_size: int, source: TextSource, seed: int):
    """A byte-level BPE (``vocab_size``) trained on the pseudo-word text, chat tags as specials."""
    from selectmoe.demo.models import train_byte_level_bpe

    rng = random.Random(seed)
    corpus = [source.text(rng.randint(8, 60), rng) for _ in range(3000)]
    tokenizer = train_byte_level_bpe(corpus, vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    tokenizer.add_special_tokens({"additional_special_tokens": list(CHAT_TAGS.values())})
    return tokenizer


def conversation(index: int, n_words: int, source: TextSource, seed: int) -> list[dict]:
    """One conversation of about ``n_words`` words (deterministic in ``index`` and ``seed``)."""
    rng = random.Random(seed * 1_000_003 + index)
    kind = index % 4
    messages = []
    if kind == 3:
        messages.append({"role": "system", "content": source.text(8, rng)})
    if kind == 2 and n_words > 40:  # two turns
        quarter = max(1, n_words // 4)
        messages += [
            {"role": "user", "content": source.text(quarter, rng)},
            {"role": "assistant", "content": source.text(quarter, rng)},
            {"role": "user", "content": source.text(quarter, rng)},
            {"role": "assistant", "content": source.text(n_words - 3 * quarter, rng)},
        ]
    else:
        user = max(1, n_words // 3)
        messages += [
            {"role": "user", "content": source.text(user, rng)},
            {"role": "assistant", "content": source.text(max(1, n_words - user), rng)},
        ]
    return messages


def make_pool(args: argparse.Namespace, tokenizer, source: TextSource, directory: Path) -> Path:
    """Write the pool JSONL: word counts are fitted (two passes) to uniform target lengths."""
    rng = random.Random(args.seed)
    targets = [rng.randint(args.min_tokens, args.max_tokens) for _ in range(args.n_examples)]
    n_words = [max(1, t // 2) for t in targets]
    for _ in range(3):
        conversations = [conversation(i, n, source, args.seed) for i, n in enumerate(n_words)]
        encoded = encode_examples(conversations, tokenizer, full_sequence_prediction=True)
        lengths = [len(e.input_ids) for e in encoded]
        n_words = [
            max(1, round(n * t / max(1, length)))
            for n, t, length in zip(n_words, targets, lengths, strict=True)
        ]
    path = directory / "bench" / "bench_data.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for index, messages in enumerate(conversations):
            record = {"dataset": "bench", "id": f"bench_{index}", "messages": messages}
            handle.write(json.dumps(record) + "\n")
    return path


# ----------------------------------------------------------------------------------------------
# models and passes


def build_models(args, vocab_size: int, tokenizer, device: torch.device, dtype: torch.dtype):
    """An OLMoE of the requested shape and a Select-MoE holding the same weights."""
    config = OlmoeConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        num_experts=args.experts,
        num_experts_per_tok=args.top_k,
        max_position_embeddings=max(4096, args.max_tokens),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(args.seed)
    olmoe = OlmoeForCausalLM(config).eval()
    values = config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype"):
        values.pop(key, None)
    select = SelectMoeForCausalLM(SelectMoeConfig(**values)).eval()
    missing, unexpected = select.load_state_dict(olmoe.state_dict(), strict=False)
    new = [key for key in missing if key.endswith(".quality_gate.weight")]
    if unexpected or len(new) != len(missing):
        raise SystemExit(f"weights differ: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return olmoe.to(device=device, dtype=dtype), select.to(device=device, dtype=dtype)


def experts_impl(model: torch.nn.Module) -> str:
    return str(model.model.layers[0].mlp.experts.config._experts_implementation)


def set_experts_impl(model: torch.nn.Module, impl: str) -> None:
    """Switch the experts implementation of every MoE layer (transformers' public setter)."""
    if experts_impl(model) != impl:
        model.set_experts_implementation(impl)
    if experts_impl(model) != impl:
        raise SystemExit(f"could not set experts implementation {impl!r}")


def padding_share(batches: list[list]) -> float:
    real = sum(len(item.input_ids) for batch in batches for item in batch)
    total = sum(len(batch) * max(len(item.input_ids) for item in batch) for batch in batches)
    return 1.0 - real / total


@torch.inference_mode()
def forward_pass(
    model, batches: list[list], pad_id: int, device: torch.device, *, decoder_only: bool = False
) -> float:
    """Seconds of a forward (router logits on, outputs dropped) over ``batches``.

    ``decoder_only``: the decoder stack without KV cache, as ``compute_router_data`` runs it;
    else the whole causal LM (LM head, default ``use_cache``), as a plain transformers call.
    """
    kwargs = {"output_router_logits": True}
    if decoder_only:
        model, kwargs["use_cache"] = model.model, False
    synchronize(device)
    start = time.perf_counter()
    for batch_items in batches:
        batch = collate_encoded(batch_items, pad_token_id=pad_id)
        model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            **kwargs,
        )
    synchronize(device)
    return time.perf_counter() - start


def warm_up(model, encoded: list, args, pad_id: int, device: torch.device) -> None:
    """A few batches of both the longest and the shortest examples, untimed."""
    by_length = sorted(encoded, key=lambda e: len(e.input_ids))
    size = args.batch_size
    batches = [by_length[-size:], by_length[:size]] * args.warmup
    forward_pass(model, batches, pad_id, device)


def time_router_data(model, encoded: list, args, pad_id: int, device: torch.device):
    synchronize(device)
    start = time.perf_counter()
    quality, probs = compute_router_data(
        model,
        encoded,
        batch_size=args.batch_size,
        pad_token_id=pad_id,
        device=device,
        progress=False,
    )
    synchronize(device)
    return time.perf_counter() - start, quality, probs


def check_batch_invariance(model, encoded: list, args, pad_id: int, main: tuple | None) -> dict:
    """compute_router_data with batch size 1 vs the benchmark's, float32, on a spread subset."""
    step = max(1, len(encoded) // args.check_samples)
    rows = list(range(0, len(encoded), step))[: args.check_samples]
    subset = [copy.copy(encoded[i]) for i in rows]
    device = next(model.parameters()).device
    kwargs = {"pad_token_id": pad_id, "device": device, "progress": False}
    q1, p1 = compute_router_data(model, subset, batch_size=1, **kwargs)
    qb, pb = compute_router_data(model, subset, batch_size=args.batch_size, **kwargs)
    result = {
        "n": len(subset),
        "quality_diff": float((q1 - qb).abs().max()),
        "probs_diff": float((p1 - pb).abs().max()),
    }
    if main is not None:
        index = torch.tensor(rows)
        result["main_quality_diff"] = float((q1 - main[0][index]).abs().max())
        result["main_probs_diff"] = float((p1 - main[1][index]).abs().max())
    result["max_diff"] = max(v for k, v in result.items() if k.endswith("_diff"))
    result["passed"] = result["max_diff"] <= TOLERANCE
    return result


# ----------------------------------------------------------------------------------------------
# report


def markdown(results: dict, args: argparse.Namespace, device: torch.device) -> str:
    pool, check = results["pool"], results["check"]
    begin, end = section_markers("scoring", device)
    lines = [
        begin,
        f"## Stage-2 scoring throughput, {device.type.upper()} (`python benchmarks/scoring.py`)",
        "",
        machine_line(results, device),
        "",
        f"Command: `{results['command']}`",
        "",
        f"Pool: {pool['n']} synthetic conversations, {pool['tokens']:,} tokens, lengths "
        f"{pool['min']}..{pool['max']} (mean {pool['mean']:.0f}, target uniform "
        f"{args.min_tokens}..{args.max_tokens}); BPE tokenizer of {pool['vocab']} tokens. Model: "
        f"hidden {args.hidden_size}, {args.experts} experts x intermediate "
        f"{args.intermediate_size}, top-{args.top_k}, {args.layers} layers, {args.heads} heads; "
        f"{args.dtype} on {device.type}; batch size {args.batch_size}. Experts implementation as "
        f"loaded: OLMoE `{results['impl']['olmoe']}`, Select-MoE `{results['impl']['select']}`. "
        "One timed pass each after a warm-up; tokens/s counts real tokens.",
        "",
        "| pass | batches | tokens/s | time | padding share | vs reference |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    reference = results["passes"][0]["seconds"]
    for run in results["passes"]:
        lines.append(
            f"| {run['name']} | {run['batches']} | {run['tokens_per_s']:,.0f} | "
            f"{run['seconds']:.1f} s | {run['padding']:.1%} | {reference / run['seconds']:.2f}x |"
        )
    by_name = {run["name"]: run["seconds"] for run in results["passes"]}
    plain = by_name["`compute_router_data` (Select-MoE)"]
    with_lm = by_name["`compute_example_statistics` with LM statistics"]
    answer_tokens = results["pool"]["answer_tokens"]
    lines += [
        "",
        f"LM statistics (answer and end-of-sequence loss; {answer_tokens:,} answer tokens "
        f"through an LM head of {pool['model_vocab']} x {args.hidden_size}): "
        f"{with_lm / plain - 1:+.0%} time over the router statistics alone (goal: at most "
        "+30%). The answer-alone pass that only "
        f"the `ifd` score needs: {results['answer_alone_seconds']:.1f} s "
        f"({results['answer_alone_seconds'] / plain:.0%} of the router pass).",
    ]
    main_note = ""
    if "main_probs_diff" in check:
        main_note = (
            f"; batch size 1 vs the timed run's rows: quality {check['main_quality_diff']:.1e}, "
            f"probs {check['main_probs_diff']:.1e}"
        )
    lines += [
        "",
        f"Batch-size invariance (float32, {check['n']} examples spread over the lengths): "
        f"max \\|Δ\\| between batch size 1 and {args.batch_size}: quality "
        f"{check['quality_diff']:.1e}, probs {check['probs_diff']:.1e}{main_note}; "
        f"tolerance {TOLERANCE:g}: **{'PASS' if check['passed'] else 'FAIL'}**.",
        "",
        end,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-examples", type=int, default=512)
    parser.add_argument("--min-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument(
        "--model-vocab",
        type=int,
        default=None,
        help="the models' vocabulary (default: the tokenizer's); larger gives the LM head the "
        "share of the work it has in a real model (OLMoE-1B-7B: 3,150 at these dimensions)",
    )
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--intermediate-size", type=int, default=256, help="per expert")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1, help="warm-up rounds (2 batches each)")
    parser.add_argument("--check-samples", type=int, default=64)
    parser.add_argument(
        "--no-sorted-reference", action="store_true", help="skip the OLMoE passes of 2."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available")
    dtype = getattr(torch, args.dtype)
    results: dict = {
        "load_start": ", ".join(f"{v:.2f}" for v in os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": shlex.join(["python", *sys.argv]),
    }
    start = time.perf_counter()
    source = TextSource(args.seed)
    tokenizer = build_tokenizer(args.vocab_size, source, args.seed)
    with tempfile.TemporaryDirectory(prefix="selectmoe-scoring-bench-") as tmp:
        pool_path = make_pool(args, tokenizer, source, Path(tmp))
        examples = load_pool([pool_path])
    encoded = encode_examples(
        examples, tokenizer, full_sequence_prediction=True, max_sequence_length=args.max_tokens
    )
    lengths = [len(e.input_ids) for e in encoded]
    n_tokens = sum(lengths)
    results["pool"] = {
        "n": len(encoded),
        "tokens": n_tokens,
        "min": min(lengths),
        "max": max(lengths),
        "mean": n_tokens / len(lengths),
        "vocab": len(tokenizer),
        "answer_tokens": sum(
            sum(label != -100 for label in e.labels)
            for e in encode_examples(
                examples,
                tokenizer,
                full_sequence_prediction=False,
                max_sequence_length=args.max_tokens,
            )
        ),
    }
    pad_id = pad_token_id_of(tokenizer)
    model_vocab = max(len(tokenizer), args.model_vocab or 0)
    results["pool"]["model_vocab"] = model_vocab
    olmoe, select = build_models(args, model_vocab, tokenizer, device, dtype)
    results["impl"] = {"olmoe": experts_impl(olmoe), "select": experts_impl(select)}
    print(json.dumps({**results["pool"], "impl": results["impl"]}), flush=True)
    print(f"# setup {time.perf_counter() - start:.1f} s", flush=True)

    file_order = [encoded[i : i + args.batch_size] for i in range(0, len(encoded), args.batch_size)]
    sorted_batches = length_sorted_batches(encoded, batch_size=args.batch_size)
    warm_up(olmoe, encoded, args, pad_id, device)
    warm_up(select, encoded, args, pad_id, device)

    passes = []

    def record(name: str, batches: str, seconds: float, padding: float) -> None:
        run = {
            "name": name,
            "batches": batches,
            "seconds": seconds,
            "tokens_per_s": n_tokens / seconds,
            "padding": padding,
        }
        passes.append(run)
        print(json.dumps(run), flush=True)

    record(
        "OLMoE forward (reference)",
        "file order",
        forward_pass(olmoe, file_order, pad_id, device),
        padding_share(file_order),
    )
    if not args.no_sorted_reference:
        record(
            "OLMoE forward",
            "length-sorted",
            forward_pass(olmoe, sorted_batches, pad_id, device),
            padding_share(sorted_batches),
        )
        # what compute_router_data runs, less the quality gate and the per-sample means: the
        # decoder stack without KV cache, with Select-MoE's experts implementation
        set_experts_impl(olmoe, results["impl"]["select"])
        warm_up(olmoe, encoded, args, pad_id, device)
        record(
            f"OLMoE decoder stack, no cache, experts `{results['impl']['select']}`",
            "length-sorted",
            forward_pass(olmoe, sorted_batches, pad_id, device, decoder_only=True),
            padding_share(sorted_batches),
        )
        set_experts_impl(olmoe, results["impl"]["olmoe"])
    seconds, quality, probs = time_router_data(select, encoded, args, pad_id, device)
    record(
        "`compute_router_data` (Select-MoE)",
        "length-sorted",
        seconds,
        padding_share(sorted_batches),
    )
    answer_encoded = encode_examples(
        examples, tokenizer, full_sequence_prediction=False, max_sequence_length=args.max_tokens
    )
    synchronize(device)
    start_lm = time.perf_counter()
    compute_example_statistics(
        select,
        answer_encoded,
        batch_size=args.batch_size,
        pad_token_id=pad_id,
        device=device,
        progress=False,
        lm_statistics=True,
        eos_token_id=tokenizer.eos_token_id,
    )
    synchronize(device)
    record(
        "`compute_example_statistics` with LM statistics",
        "length-sorted",
        time.perf_counter() - start_lm,
        padding_share(sorted_batches),
    )
    synchronize(device)
    start_alone = time.perf_counter()
    answer_alone_losses(
        select,
        examples,
        tokenizer,
        batch_size=args.batch_size,
        max_sequence_length=args.max_tokens,
        device=device,
    )
    synchronize(device)
    alone_seconds = time.perf_counter() - start_alone
    results["answer_alone_seconds"] = alone_seconds
    results["passes"] = passes

    if dtype == torch.float32:
        check_model, main = select, (quality, probs)
    else:
        check_model, main = copy.deepcopy(select).float(), None
    results["check"] = check_batch_invariance(check_model, encoded, args, pad_id, main)
    print(json.dumps(results["check"]), flush=True)
    results["load_end"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"# total {time.perf_counter() - start:.0f} s", flush=True)

    section = markdown(results, args, device)
    print(section)
    router_pass = next(run for run in passes if run["name"].startswith("`compute_router_data`"))
    print(
        f"compute_router_data: {router_pass['tokens_per_s']:,.0f} tokens/s, "
        f"{passes[0]['seconds'] / router_pass['seconds']:.2f}x the reference; batch-size check "
        f"max diff {results['check']['max_diff']:.1e} "
        f"({'PASS' if results['check']['passed'] else 'FAIL'} at {TOLERANCE:g})"
    )
    if not args.no_write:
        replace_section(args.output, section, section_markers("scoring", device))


if __name__ == "__main__":
    main()

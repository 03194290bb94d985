"""The targeted methods' per-example work against the plain way of doing it, on the demo target.

1. LESS's per-example LoRA gradients: ``selectmoe.training.gradients.per_example_gradients``
(``torch.func``
   ``vmap`` over a padded, length-sorted batch) against one ``backward()`` per example (what LESS
   does, batch size 1), on the same examples; the largest difference between the two is printed.
2. RDS+'s pooled representations: ``selectmoe.stages.representations.compute_representations``
   (length-sorted padded batches) against one plain transformers forward per example with
   ``output_hidden_states`` and the authors' weighted mean.

Usage::

    python benchmarks/targeted.py --demo-results results --n 256    # after the demo ran

The results replace the ``targeted`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from results_md import machine_line, replace_section
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from selectmoe.data.encoding import collate_encoded, encode_examples, length_sorted_batches
from selectmoe.data.pool import load_pool
from selectmoe.model.losses import causal_lm_loss
from selectmoe.stages.less import LessSettings, lora_target_model
from selectmoe.stages.representations import RepresentationSettings, compute_representations
from selectmoe.training.gradients import per_example_gradients


def _gradients(model_dir: str, examples, batch_size: int) -> dict[str, float]:
    settings = LessSettings(lora_r=8, lora_alpha=32, bf16=False, max_sequence_length=256)
    model, tokenizer, _ = lora_target_model(model_dir, settings, torch.device("cpu"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    model.eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    encoded = encode_examples(
        examples, tokenizer, full_sequence_prediction=False, max_sequence_length=256
    )
    start = time.perf_counter()
    batched = torch.empty(len(encoded), sum(p.numel() for p in params.values()))
    for batch_items in length_sorted_batches(encoded, batch_size=batch_size):
        batch = collate_encoded(batch_items, pad_token_id=tokenizer.pad_token_id)
        batched[batch["index"]] = per_example_gradients(
            model, params, batch["input_ids"], batch["labels"]
        )
    vmap_s = time.perf_counter() - start
    start = time.perf_counter()
    largest = 0.0
    for row, item in enumerate(encoded):
        model.zero_grad()
        logits = model(input_ids=torch.tensor([item.input_ids])).logits
        causal_lm_loss(logits, torch.tensor([item.labels]), sample_wise=False).backward()
        direct = torch.cat([dict(model.named_parameters())[n].grad.reshape(-1) for n in names])
        largest = max(largest, float((batched[row] - direct).abs().max()))
    loop_s = time.perf_counter() - start
    return {"vmap_s": vmap_s, "loop_s": loop_s, "max_abs_diff": largest, "params": len(names)}


def _representations(model_dir: str, examples, batch_size: int) -> dict[str, float]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    body = AutoModel.from_pretrained(model_dir).eval()
    settings = RepresentationSettings(batch_size=batch_size, max_sequence_length=256)
    start = time.perf_counter()
    pooled = compute_representations(
        body, tokenizer, examples, settings=settings, device=torch.device("cpu")
    )
    batched_s = time.perf_counter() - start
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    encoded = encode_examples(
        examples, tokenizer, full_sequence_prediction=True, max_sequence_length=256
    )
    start = time.perf_counter()
    largest = 0.0
    with torch.no_grad():
        for row, item in enumerate(encoded):
            ids = torch.tensor([item.input_ids])
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            weights = torch.arange(1, ids.shape[1] + 1, dtype=torch.float32)
            plain = (hidden * (weights / weights.sum())[:, None]).sum(dim=0)
            largest = max(largest, float((pooled[row] - plain).abs().max()))
    loop_s = time.perf_counter() - start
    return {"batched_s": batched_s, "loop_s": loop_s, "max_abs_diff": largest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-results", default="results", help="a finished demo's results")
    parser.add_argument("--n", type=int, default=256, help="pool examples")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = {"load_start": ", ".join(f"{v:.2f}" for v in os.getloadavg())}
    load["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    demo = Path(args.demo_results) / "demo"
    pool = sorted((demo / "pool").glob("*/*_data.jsonl"))
    examples = load_pool(pool)[: args.n]
    model_dir = str(demo / "target_model")
    gradients = _gradients(model_dir, examples, args.batch_size)
    representations = _representations(model_dir, examples, args.batch_size)
    load["load_end"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    command = "python benchmarks/targeted.py " + shlex.join(sys.argv[1:])
    lines = [
        "<!-- targeted:begin -->",
        f"## Targeted methods' per-example work, CPU (`{command.strip()}`)",
        "",
        f"{len(examples)} demo pool examples, the demo's target (tiny Llama), batches of "
        f"{args.batch_size} sorted by length; {machine_line(load, torch.device('cpu'))}",
        "",
        "| work | selectmoe | plain (one example at a time) | speed-up | max abs difference |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| LESS per-example LoRA gradients (r 8, q/k/v/o) | {gradients['vmap_s']:.2f} s "
        f"(vmap) | {gradients['loop_s']:.2f} s (backward per example) | "
        f"{gradients['loop_s'] / gradients['vmap_s']:.2f}x | {gradients['max_abs_diff']:.1e} |",
        f"| RDS+ weighted mean-pooled final hidden states | {representations['batched_s']:.2f} s "
        f"| {representations['loop_s']:.2f} s (forward per example) | "
        f"{representations['loop_s'] / representations['batched_s']:.2f}x | "
        f"{representations['max_abs_diff']:.1e} |",
        "<!-- targeted:end -->",
    ]
    print("\n".join(lines))
    replace_section(
        args.output, "\n".join(lines), ("<!-- targeted:begin -->", "<!-- targeted:end -->")
    )


if __name__ == "__main__":
    main()

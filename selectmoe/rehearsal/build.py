"""Build the rehearsal's fixtures: the LESS archive and tiny checkpoints of the paper's models."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from selectmoe.errors import check_int
from selectmoe.io import atomic_output_dir, atomic_write_text
from selectmoe.rehearsal.archive import write_less_archive
from selectmoe.rehearsal.models import REHEARSAL_MODELS, save_tiny_model
from selectmoe.rehearsal.tokenizers import (
    gpt_neox_like_tokenizer,
    qwen_real_tokenizer,
    sentencepiece_llama_tokenizer,
)

__all__ = ["MANIFEST", "build_rehearsal"]

logger = logging.getLogger(__name__)

MANIFEST = "rehearsal_manifest.json"
#: bump when the fixtures change, so that an older build is rebuilt
FIXTURES_VERSION = 1


def _corpus(archive: Path) -> list[str]:
    """Every text of the archive's pool, for training the invented vocabularies."""
    import zipfile

    texts = []
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            if name.endswith("_data.jsonl"):
                for line in zf.read(name).decode("utf-8").splitlines():
                    record = json.loads(line)
                    texts.append("\n".join(m["content"] for m in record["messages"]))
    return texts


def _tokenizer(kind: str, corpus: list[str], scratch: Path) -> Any:
    if kind == "gpt_neox_like":
        return gpt_neox_like_tokenizer(corpus, vocab_size=1024)
    if kind == "sentencepiece_llama":
        return sentencepiece_llama_tokenizer(
            scratch / "sentencepiece", corpus, vocab_size=800, legacy=False
        )
    if kind == "qwen_real":
        return qwen_real_tokenizer()
    raise KeyError(kind)


def build_rehearsal(
    out_dir: str | os.PathLike[str], *, seed: int = 0, examples_per_dataset: int = 48
) -> dict[str, Any]:
    """Build the rehearsal's fixtures in ``out_dir`` (replaced only when complete).

    Layout::

        out_dir/less-data.zip                the archive (:mod:`selectmoe.rehearsal.archive`)
        out_dir/models/{name}/               tiny checkpoints (:mod:`selectmoe.rehearsal.models`)
        out_dir/rehearsal_manifest.json      parameters, pool counts, model summaries

    A complete build with the same parameters is kept as it is (the call returns its manifest).

    Returns
    -------
    dict
        The manifest.
    """
    check_int(seed, "seed", minimum=0)
    check_int(examples_per_dataset, "examples_per_dataset", minimum=8)
    out_path = Path(out_dir)
    parameters = {
        "version": FIXTURES_VERSION,
        "seed": seed,
        "examples_per_dataset": examples_per_dataset,
    }
    manifest_path = out_path / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("parameters") == parameters:
            logger.info("rehearsal fixtures already built in %s", out_path)
            return manifest
    start = time.perf_counter()
    with atomic_output_dir(out_path) as tmp:
        counts = write_less_archive(
            tmp / "less-data.zip", seed=seed, examples_per_dataset=examples_per_dataset
        )
        corpus = _corpus(tmp / "less-data.zip")
        models = {}
        for index, (name, spec) in enumerate(REHEARSAL_MODELS.items()):
            tokenizer = _tokenizer(spec.tokenizer, corpus, tmp / "scratch")
            model_dir = tmp / "models" / name
            models[name] = save_tiny_model(name, tokenizer, model_dir, seed=seed + index)
            if spec.tokenizer == "sentencepiece_llama":  # the Hub's Llama-2 ships both files
                shutil.copyfile(
                    tmp / "scratch" / "sentencepiece" / "sp.model", model_dir / "tokenizer.model"
                )
            logger.info("rehearsal model %s: %s", name, models[name])
        shutil.rmtree(tmp / "scratch", ignore_errors=True)
        manifest = {"parameters": parameters, "pool": counts, "models": models}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    logger.info("rehearsal fixtures built in %.1f s: %s", time.perf_counter() - start, out_path)
    return manifest

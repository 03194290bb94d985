"""Where a model comes from: a local directory or a Hugging Face hub id, checked before any
stage loads it."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["require_model_source"]


def require_model_source(source: str, *, what: str) -> Any:
    """Fail early unless ``source`` is a model directory or a reachable hub id ("org/name").

    Returns
    -------
    transformers.PretrainedConfig
        The model's config, read from the directory, the Hugging Face cache or the Hub (a hub id
        offline without a cached copy is an error here, not a traceback at model loading).

    Raises
    ------
    ModelError
        Naming ``what`` (e.g. "target model") and the path.
    """
    from transformers import AutoConfig

    from selectmoe.errors import ModelError

    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/"))
    if not os.path.isdir(source) and not looks_like_hub_id:
        raise ModelError(f"{source}: {what} not found; build the demo or fix the path")
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"{source}: cannot load a model config for the {what} ({error.__class__.__name__}); "
            "give a local model directory or a hub id that is reachable (set HF_HUB_OFFLINE=0 "
            "when online)"
        ) from None

"""Where a model comes from: a local directory or a Hugging Face hub id, checked before any
stage loads it."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["require_finite_weights", "require_model_source"]


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


def require_finite_weights(
    tensors: Any, *, path: str | os.PathLike[str], rerun: str, error: type[Exception] | None = None
) -> None:
    """Refuse weights with NaN or infinite values before a stage uses them.

    Parameters
    ----------
    tensors : mapping of str to torch.Tensor
        The weights (e.g. a warmup's weights, an adapter's tensors).
    path : path-like
        The file they came from, named in the message.
    rerun : str
        The rule that wrote them, named in the message.

    Raises
    ------
    ModelError (or ``error``)
        Naming the file, the first tensor with non-finite values and how many there are.
    """
    import torch

    from selectmoe.errors import ModelError

    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise (error or ModelError)(
                f"{os.fspath(path)}: tensor {name} has {bad} NaN or infinite values of "
                f"{tensor.numel()}; the weights are unusable: rerun rule {rerun}"
            )

"""The names every registry knows, importable without torch.

The registries themselves (quality losses, scores, allocations, clustering methods, trash
experts, selection methods) hold functions and live in modules that import torch. Checking a
config's names must not load them: a dry run of the paper config reads this catalogue instead.
It lists the built-in names, and each ``register_*`` function adds the name it registers here
too, so a plugin's names are valid config values as soon as the plugin is imported.
``tests/test_catalogue.py`` checks that the built-in names equal the registries' own.
"""

from __future__ import annotations

__all__ = ["BUILTIN_NAMES", "REGISTRIES", "names", "register_name"]

#: What each registry is called in messages, by its key.
REGISTRIES: dict[str, str] = {
    "quality_loss": "quality loss",
    "score": "score",
    "allocation": "allocation",
    "clustering_method": "clustering method",
    "trash_expert": "trash expert mode",
}

#: The built-in names of each registry, in the order the registry lists them (sorted).
BUILTIN_NAMES: dict[str, tuple[str, ...]] = {
    "quality_loss": ("beta_moment_matching", "mean_variance_regularization", "mse", "sigmoid"),
    "score": (
        "eos_loss",
        "excess_loss",
        "gate",
        "ifd",
        "length_residual",
        "lm_loss",
        "loss_quantile",
        "random",
        "rank_blend",
        "worst_turn_loss",
    ),
    "allocation": (
        "drop_then_round_robin",
        "floor_round_robin",
        "ifd_filter",
        "proportional",
        "quality_quota",
        "random",
        "round_robin",
        "topk",
    ),
    "clustering_method": ("kmeans",),
    # "custom" joins when a plugin registers a trash expert
    "trash_expert": ("noise", "zero"),
}

_REGISTERED: dict[str, set[str]] = {kind: set() for kind in REGISTRIES}


def register_name(kind: str, name: str) -> None:
    """Record that ``name`` was registered in the registry ``kind`` (called by ``register_*``)."""
    if kind not in _REGISTERED:
        raise KeyError(f"unknown registry {kind!r}; valid: {', '.join(REGISTRIES)}")
    _REGISTERED[kind].add(name)


def names(kind: str) -> list[str]:
    """The names of registry ``kind``: built in or registered so far, sorted."""
    if kind not in _REGISTERED:
        raise KeyError(f"unknown registry {kind!r}; valid: {', '.join(REGISTRIES)}")
    return sorted({*BUILTIN_NAMES[kind], *_REGISTERED[kind]})

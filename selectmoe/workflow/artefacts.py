"""Artefacts that a plugin's kind of selection method needs: declared here, made by one rule.

A plugin that adds a kind of method (:func:`selectmoe.selection.kinds.register_method_kind`)
may need files that no built-in stage makes: a per-dataset statistic, another model's
embeddings. It declares each as an :class:`Artefact`, and the workflow's one ``artefact`` rule
makes it at ``results/artefacts/{name}/{key}``: the kind's ``inputs`` name it with
``layout.artefact(name, **wildcards)``, and the job graph, the cost ledger and the plan follow it
like any other input. Nothing outside the plugin changes.

Example (a plugin module)::

    from selectmoe.workflow.artefacts import Artefact, register_artefact

    def count_words(inputs, output, wildcards): ...   # writes ``output``

    register_artefact(
        Artefact(
            name="word_counts",
            key="{dataset}.json",
            inputs=lambda layout, w: {"pool": layout.pool_files(w["dataset"])},
            make=count_words,
        )
    )
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from selectmoe.errors import ConfigError

__all__ = ["Artefact", "artefacts", "get_artefact", "make_artefact", "register_artefact"]

_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Artefact:
    """A file a plugin's kind reads, made by the ``artefact`` rule.

    Attributes
    ----------
    name : str
        Letters, digits and underscores; the file lives under ``artefacts/{name}/``.
    key : str
        The file's path under that directory, with the artefact's wildcards in braces
        (``"{dataset}.json"``).
    inputs : callable
        ``(layout, wildcards) -> {name: [paths]}``: what the job reads.
    make : callable
        ``(inputs: {name: [paths]}, output: str, wildcards: dict) -> Any``: writes ``output``.
    description : str
    """

    name: str
    key: str
    inputs: Callable[[Any, dict[str, str]], dict[str, Any]]
    make: Callable[[Mapping[str, Sequence[str]], str, dict[str, str]], Any]
    description: str = ""

    @property
    def wildcards(self) -> list[str]:
        return _FIELD.findall(self.key)

    def wildcards_of(self, key: str) -> dict[str, str]:
        """The wildcards of one file's ``key`` (the inverse of ``key.format(**wildcards)``).

        Raises
        ------
        ConfigError
            When ``key`` does not have the artefact's shape.
        """
        parts = _FIELD.split(self.key)
        pattern = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
        )
        match = re.fullmatch(pattern, key)
        if match is None:
            raise ConfigError(f"artefact {self.name!r}: {key!r} does not have the shape {self.key}")
        return match.groupdict()

    def inputs_of(self, layout: Any, key: str) -> dict[str, Any]:
        return self.inputs(layout, self.wildcards_of(key))


_ARTEFACTS: dict[str, Artefact] = {}


def register_artefact(artefact: Artefact, *, overwrite: bool = False) -> Artefact:
    """Declare an artefact (from a plugin module).

    Raises
    ------
    ConfigError
        For a name that is not letters, digits and underscores, or one registered before.
    """
    if not _NAME.match(artefact.name):
        raise ConfigError(
            f"artefact name {artefact.name!r}: use letters, digits and underscores only"
        )
    if artefact.name in _ARTEFACTS and not overwrite:
        raise ConfigError(f"artefact {artefact.name!r} is already registered")
    _ARTEFACTS[artefact.name] = artefact
    return artefact


def artefacts() -> list[str]:
    """The registered artefacts' names, sorted."""
    return sorted(_ARTEFACTS)


def get_artefact(name: str) -> Artefact:
    """The artefact registered as ``name``; an error lists the registered ones."""
    try:
        return _ARTEFACTS[name]
    except KeyError:
        raise ConfigError(
            f"no artefact {name!r} is registered (registered: {', '.join(artefacts()) or 'none'}); "
            "the plugin that declares it must be listed in the config's plugins"
        ) from None


def make_artefact(
    name: str,
    key: str,
    *,
    inputs: Mapping[str, Sequence[str | os.PathLike[str]]],
    output: str | os.PathLike[str],
) -> Any:
    """Make one artefact file (the ``artefact`` rule's work)."""
    artefact = get_artefact(name)
    files = {k: [os.fspath(p) for p in v] for k, v in inputs.items()}
    return artefact.make(files, os.fspath(output), artefact.wildcards_of(key))

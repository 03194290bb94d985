"""The torch-free catalogue of registered names (selectmoe.catalogue) against the registries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from selectmoe import catalogue


def test_built_in_names_are_the_registries_own():
    """In a fresh process (no plugin), the catalogue lists exactly what the registries hold: a
    name added to a registry without the catalogue (or the other way round) fails here."""
    code = """
import json
from selectmoe import catalogue
from selectmoe.clustering import list_clustering_methods
from selectmoe.model.configuration_select_moe import TRASH_EXPERT_MODES
from selectmoe.model.losses import available_quality_losses
from selectmoe.selection.allocation import available_allocations
from selectmoe.selection.scores import available_scores

registries = {
    "quality_loss": available_quality_losses(),
    "score": available_scores(),
    "allocation": available_allocations(),
    "clustering_method": list_clustering_methods(),
    "trash_expert": sorted(set(TRASH_EXPERT_MODES) - {"custom"}),
}
pairs = {k: [sorted(catalogue.BUILTIN_NAMES[k]), sorted(v)] for k, v in registries.items()}
print(json.dumps(pairs))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for kind, (built_in, registry) in json.loads(done.stdout).items():
        assert built_in == registry, kind


def test_a_registration_is_in_the_catalogue():
    from selectmoe.selection.allocation import _REGISTRY, register_allocation

    register_allocation("catalogue_test_first", lambda *a, **k: None)
    try:
        assert "catalogue_test_first" in catalogue.names("allocation")
    finally:
        del _REGISTRY["catalogue_test_first"]
        catalogue._REGISTERED["allocation"].discard("catalogue_test_first")
    with pytest.raises(KeyError, match="unknown registry 'nope'; valid: quality_loss"):
        catalogue.names("nope")

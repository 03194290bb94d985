"""Plugins: modules imported by every job that register losses, trash experts and methods."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from selectmoe.errors import ConfigError
from selectmoe.workflow.plugins import PLUGINS_VARIABLE, load_plugins, load_plugins_from_environment

PLUGIN = '''
"""A user's plugin: a quality loss, a trash expert and a selection method."""
import os

import numpy as np

from selectmoe.model.losses import register_quality_loss
from selectmoe.model.modeling_select_moe import register_trash_expert
from selectmoe.selection.select import register_selection_method

# every import leaves a line, so that the test sees which processes imported the plugin
with open(os.environ["PLUGIN_TRACE"], "a") as trace:
    trace.write(f"{os.getpid()}\\n")


@register_quality_loss("mean_abs_from_half", overwrite=True)
def mean_abs_from_half(good, mask, config):
    weights = mask.to(good.dtype)
    return ((good - 0.5).abs() * weights).sum() / weights.sum().clamp(min=1.0)


register_trash_expert(lambda hidden, config: -0.5 * hidden)


def longest_first(router, *, n, scores, seed):
    return np.argsort(-scores, kind="stable")[:n]


register_selection_method("plugin_topk", longest_first, overwrite=True)
'''


def test_load_plugins_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="not a Python module name"):
        load_plugins(["my-plugin"])
    with pytest.raises(ConfigError, match="list of module names"):
        load_plugins("plugin")
    with pytest.raises(ConfigError, match=r"plugin module 'no_such_plugin_xyz' cannot be imported"):
        load_plugins(["no_such_plugin_xyz"])
    (tmp_path / "broken_plugin_xyz.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"RuntimeError: boom"):
        load_plugins(["broken_plugin_xyz"])
    monkeypatch.setenv(PLUGINS_VARIABLE, "")
    assert load_plugins_from_environment() == []


def test_a_plugin_registers_a_loss_a_trash_expert_and_a_method(tmp_path, monkeypatch):
    from selectmoe.model.losses import available_quality_losses, get_quality_loss
    from selectmoe.selection.select import available_selection_methods, select_indices
    from tests.test_selection import make_router_payload, save

    (tmp_path / "unit_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PLUGIN_TRACE", str(tmp_path / "trace.txt"))
    monkeypatch.setenv(PLUGINS_VARIABLE, "unit_plugin")
    (module,) = load_plugins_from_environment()
    assert module.__name__ == "unit_plugin"
    assert "mean_abs_from_half" in available_quality_losses()
    good = torch.tensor([[0.2, 0.9]], requires_grad=True)
    loss = get_quality_loss("mean_abs_from_half")(good, torch.ones(1, 2), None)
    loss.backward()
    assert loss.item() == pytest.approx(0.35) and good.grad.abs().sum() > 0
    assert "plugin_topk" in available_selection_methods()
    from selectmoe.data.router_data import load_router_data

    router = load_router_data([save(make_router_payload("a", 20, seed=0), tmp_path / "a.pt")])
    result = select_indices(router, method="plugin_topk", selection_percentage=0.25, seed=0)
    assert result.indices.tolist() == np.argsort(-result.scores, kind="stable")[:5].tolist()


@pytest.mark.slow
def test_a_plugin_runs_warmup_and_scoring_through_snakemake(tmp_path):
    """The config names a plugin module; warmup (its loss, its trash expert) and scoring run."""
    from selectmoe.workflow.config import merge_configs
    from tests.test_workflow import SMALL_DEMO, _copy_workflow, _snakemake

    workflow_dir = tmp_path / "wf"
    workflow_dir.mkdir()
    _copy_workflow(workflow_dir)
    (workflow_dir / "my_plugin.py").write_text(PLUGIN)
    config = yaml.safe_load((workflow_dir / "config/config.yaml").read_text())
    merge_configs(config, json.loads(json.dumps(SMALL_DEMO)))
    merge_configs(
        config,
        {
            "plugins": ["my_plugin"],
            "warmup": {"trash_expert_mode": "custom"},
            "selection": {"loss_types": ["mean_abs_from_half"], "methods": ["plugin_topk"]},
        },
    )
    (workflow_dir / "plugin.yaml").write_text(yaml.safe_dump(config))
    trace = tmp_path / "trace.txt"
    targets = [
        f"results/router_data/mean_abs_from_half/r1/{d}_router_data.pt"
        for d in ("cot", "dolly", "flan_v2", "oasst1")
    ] + ["results/selection/plugin_topk/mean_abs_from_half/p0.25/r1/selected_data.jsonl"]
    import os

    os.environ["PLUGIN_TRACE"] = str(trace)
    try:
        run = _snakemake(workflow_dir, *targets, "--cores", "2", "--configfile", "plugin.yaml")
    finally:
        del os.environ["PLUGIN_TRACE"]
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    weights = torch.load(
        workflow_dir / "results/warmup/mean_abs_from_half/r1/full_rank_weights.pt",
        weights_only=False,
    )
    assert weights["config"]["settings"]["quality_loss_type"] == "mean_abs_from_half"
    assert weights["config"]["model_overrides"]["trash_expert_mode"] == "custom"
    data = torch.load(
        workflow_dir / "results/router_data/mean_abs_from_half/r1/cot_router_data.pt",
        weights_only=False,
    )
    assert data["metadata"]["trash_expert_mode"] == "custom"
    # the Snakefile and every job imported the plugin (one line per process)
    assert len(trace.read_text().split()) >= 1 + 1 + 4 + 1  # parse, warmup, 4 scores, select
    selected = workflow_dir / "results/selection/plugin_topk/mean_abs_from_half/p0.25/r1"
    info = json.loads((selected / "selection.json").read_text())
    assert info["method"] == "plugin_topk" and info["n_selected"] == 60
    # an unregistered name without the plugin is refused before anything runs
    config["plugins"] = []
    (workflow_dir / "noplugin.yaml").write_text(yaml.safe_dump(config))
    refused = _snakemake(workflow_dir, "-n", "--configfile", "noplugin.yaml")
    assert refused.returncode != 0
    assert "'mean_abs_from_half' is not registered" in refused.stdout + refused.stderr

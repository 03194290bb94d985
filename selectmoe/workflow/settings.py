"""The settings each job reads: exactly the slice of the config that its rule passes as params.

A rule's params are Snakemake's rerun triggers, so each function here returns what one job
uses and nothing else: adding a percentage must not rerun every selection, nor a clustering
setting the selections that do not cluster. The values are JSON-ready dicts, taken from the
validated config whose defaults come from the schema alone (``config/schema.yaml``); each job
builds its typed settings object from them once (:func:`selectmoe.workflow.config.build_settings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from selectmoe.selection.methods import uses_clusters
from selectmoe.workflow.layout import Layout, Selection

__all__ = ["RuleSettings"]


class RuleSettings:
    """The params of every rule, for one validated config.

    Parameters
    ----------
    layout : Layout
        The workflow's layout of the same config.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.config: Mapping[str, Any] = layout.config

    def _section(self, name: str) -> dict[str, Any]:
        return dict(self.config.get(name) or {})

    def conversion(self) -> dict[str, Any]:
        """The converted model's source and the gates' initialisation."""
        base = self.config["base_model"]
        return {
            "source": str(self.layout.base_source()),
            "gate_init_mean": base["quality_gate_init_mean"],
            "gate_init_std": base["quality_gate_init_std"],
            "seed": base["conversion_seed"],
        }

    def warmup(self, loss: str, rep: Any) -> dict[str, Any]:
        """The warmup section with the loss type of the job; the replicate seeds the gates'
        initialisation, the warmup's subset and its order."""
        return {
            **self._section("warmup"),
            "quality_loss_type": loss,
            "seed": int(rep),
            "gate_init_seed": int(rep),
            "template": self.template(),
        }

    def template(self) -> str:
        """``data.template``: every stage that encodes conversations reads it."""
        return str(self.config["data"]["template"])

    def scoring(self) -> dict[str, Any]:
        """The scoring section (the untrained control's too: its LM statistics are
        ``excess_loss``'s reference and the diagnostics' comparison)."""
        return {**self._section("scoring"), "template": self.template()}

    def clustering(self, rep: Any) -> dict[str, Any]:
        """The settings of a cluster job; the replicate seeds k-means."""
        selection = self.config["selection"]
        keys = ("clustering_method", "clustering_params", "debug_print")
        return {**{key: selection.get(key, {}) for key in keys}, "seed": int(rep)}

    def selection(self, selection_path: str) -> dict[str, Any]:
        """The selection keys one selection uses: its method and percentage, its replicate's
        seed (0 for a method without chance), and only what its method reads (a definition of
        its own, the clustering when it clusters).

        Passing the whole section would rerun every selection when a sweep value (a percentage,
        a method, a loss type) is added, the baselines and unclustered methods when a clustering
        setting changes, and every method when one method's definition changes.
        """
        chosen = Selection.from_path(selection_path)
        section = self.config["selection"]
        settings: dict[str, Any] = {
            "method": chosen.method,
            "percentage": chosen.percentage,
            "seed": chosen.replicate if chosen.replicate is not None else 0,
            "debug_print": section["debug_print"],
        }
        own = dict(section.get("method_definitions") or {})
        if chosen.method in own:
            settings["method_definitions"] = {chosen.method: own[chosen.method]}
        if uses_clusters(chosen.method, own):
            settings["clustering_method"] = section["clustering_method"]
            settings["clustering_params"] = section.get("clustering_params", {})
        return settings

    def finetune(self, target: str, rep: Any, seed: Any) -> dict[str, Any]:
        """The finetune section with the target's overrides, for one replicate's finetune seed
        (:meth:`Layout.finetune_seed`)."""
        settings = {k: v for k, v in self._section("finetune").items() if k != "seeds"}
        settings.update(self.config["targets"][target].get("finetune", {}))
        settings["seed"] = self.layout.finetune_seed(rep, seed)
        settings["template"] = self.template()
        return settings

    def evaluation(self) -> dict[str, Any]:
        """The evaluation section but the drift sentinel, which only the summary reads (a new
        expected value re-evaluates nothing)."""
        evaluation = self._section("evaluation")
        evaluation.pop("expected_base", None)
        return evaluation

    def summary(self) -> dict[str, Any]:
        """The summary section and the base model's expected scores (the drift sentinel)."""
        expected = self.config["evaluation"].get("expected_base") or {}
        return {**self._section("summary"), "expected_base": expected}

    def representations(self) -> dict[str, Any]:
        """targeted.rds."""
        rds = dict((self.config.get("targeted") or {}).get("rds") or {})
        return {**rds, "template": self.template()}

    def less(self, rep: Any) -> dict[str, Any]:
        """targeted.less with the replicate's seed (the warmup's random share, its training and
        the gradients' random projection)."""
        less = dict((self.config.get("targeted") or {}).get("less") or {})
        return {**less, "seed": int(rep), "template": self.template()}

    def query_tasks(self) -> list[str]:
        """The LESS tasks whose query sets fetch_queries takes."""
        return list(self.config["targeted"]["queries"]["tasks"])

    def fetch_pool(self) -> dict[str, Any]:
        """Arguments of :func:`selectmoe.data.fetch.fetch_pool_files`: ``source`` and the
        arguments of its exporter (LESS's archive, or a Hugging Face dataset)."""
        data = self.config["data"]
        source = data.get("source", "less_archive")
        return {
            "source": source,
            "pool_dir": data["pool_dir"],
            "datasets": list(self.layout.datasets),
            "file_pattern": data["file_pattern"],
            **(data.get("hf", {}) if source == "hf" else data["fetch"]),
        }

    def quality_loss_parameters(self) -> dict[str, Any]:
        """The warmup's quality-loss parameters (the report draws the losses with them)."""
        keys = ("beta_target_mean", "beta_target_var", "w_mean", "w_var", "lambda_var")
        warmup = self.config["warmup"]
        return {key: warmup[key] for key in (*keys, "sample_wise_averaging")}

    def demo(self) -> dict[str, Any]:
        demo = self._section("demo")
        return {"seed": demo.get("seed", 0), "params": dict(demo.get("params") or {})}

"""Glue: rules select_routed / select_random / select_reference / select_full /
select_targeted -> selectmoe.selection.select.run_selection."""

from selectmoe.selection.select import run_selection
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    selection = job.params.selection
    return run_selection(
        # the router data, or the targeted methods' features of the pool datasets
        list(job.input.get("router_data") or job.input.get("features") or []),
        list(job.input.pool),
        output_jsonl=job.output.selected,
        output_json=job.output.info,
        plot_dir=job.output.plots,
        method=job.params.method,
        selection_percentage=job.params.percentage,
        clustering_method=selection.get("clustering_method", "kmeans"),
        clustering_params=dict(selection.get("clustering_params", {})),
        seed=selection["seed"],
        debug_print=selection["debug_print"],
        labels_path=job.input.get("labels") or None,
        method_definitions=selection.get("method_definitions") or {},
        clusters_path=job.input.get("clusters") or None,
        queries_path=job.input.get("queries") or None,
    )


run_rule(snakemake, main)

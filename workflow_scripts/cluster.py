"""Glue: rule cluster -> selectmoe.selection.clusters.run_clustering."""

from selectmoe.selection.clusters import run_clustering
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    selection = job.params.selection
    return run_clustering(
        list(job.input.router_data),
        job.output.clusters,
        clustering_method=selection["clustering_method"],
        clustering_params=dict(selection["clustering_params"]),
        seed=selection["seed"],
        debug_print=selection["debug_print"],
    )


run_rule(snakemake, main)

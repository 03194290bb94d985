"""Glue: rule report_quality_scores -> selectmoe.evidence.quality_figures.plot_quality_scores."""

from selectmoe.evidence.quality_figures import plot_quality_scores
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    loss = job.wildcards.loss
    return plot_quality_scores(
        list(job.input.router_data),
        job.output.plot,
        stats_csv=job.output.stats,
        title=f"Quality score per dataset and layer (quality loss '{loss}')",
    )


run_rule(snakemake, main)

"""Glue: rule report_quality_losses -> selectmoe.evidence.quality_figures.plot_quality_losses."""

from selectmoe.evidence.quality_figures import plot_quality_losses
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return plot_quality_losses(
        job.output.plot,
        params=dict(job.params.loss_params),
    )


run_rule(snakemake, main)

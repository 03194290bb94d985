"""Glue: rule report_noise -> selectmoe.evidence.noise_figures.plot_noise_kept."""

from selectmoe.evidence.noise_figures import plot_noise_kept
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return plot_noise_kept(
        job.input.labels,
        dict(zip(job.params.names, job.input.selected, strict=True)),
        job.output.plot,
        output_csv=job.output.table,
    )


run_rule(snakemake, main)

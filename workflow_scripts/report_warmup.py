"""Glue: rule report_warmup -> selectmoe.evidence.warmup_figures.plot_warmup_history."""

from selectmoe.evidence.warmup_figures import plot_warmup_history
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return plot_warmup_history(
        job.input.weights,
        losses_png=job.output.losses,
        good_ratio_png=job.output.good_ratio,
        title=f"warmup, quality loss '{job.wildcards.loss}'",
    )


run_rule(snakemake, main)

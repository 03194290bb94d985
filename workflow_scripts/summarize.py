"""Glue: rule summarize -> selectmoe.evidence.summary.summarize."""

from selectmoe.evidence.summary import SummarySettings, summarize
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return summarize(
        list(job.params.points),
        output_csv=job.output.csv,
        output_md=job.output.md,
        plot_path=job.output.plot,
        settings=SummarySettings(**job.params.settings),
    )


run_rule(snakemake, main)

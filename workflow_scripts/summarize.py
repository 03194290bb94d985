"""Glue: rule summarize -> selectmoe.summary.summarize."""

from selectmoe.runtime import run_rule
from selectmoe.summary import SummarySettings, summarize


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

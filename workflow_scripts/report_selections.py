"""Glue: rule report_selections -> selectmoe.evidence.selection_plots.selection_overview."""

from selectmoe.evidence.selection_plots import selection_overview
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return selection_overview(
        dict(zip(job.params.names, job.input.info, strict=True)),
        job.output.table,
    )


run_rule(snakemake, main)

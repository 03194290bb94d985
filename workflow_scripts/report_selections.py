"""Glue: rule report_selections -> selectmoe.evidence.report.selection_overview."""

from selectmoe.evidence.report import selection_overview
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return selection_overview(
        dict(zip(job.params.names, job.input.info, strict=True)),
        job.output.table,
    )


run_rule(snakemake, main)

"""Glue: rule verify_conversion -> selectmoe.model.conversion.verify_conversion."""

from selectmoe.model.conversion import verify_conversion
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return verify_conversion(
        job.params.source,
        job.input.model,
        output_json=job.output.report,
    )


run_rule(snakemake, main)

"""Glue: rule validate_data -> selectmoe.data.pool.validate_data_files."""

from selectmoe.data.pool import validate_data_files
from selectmoe.io import atomic_write_json
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return atomic_write_json(
        job.output.report,
        validate_data_files(list(job.input.pool)),
    )


run_rule(snakemake, main)

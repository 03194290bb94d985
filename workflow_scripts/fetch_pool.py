"""Glue: rule fetch_pool -> selectmoe.data.fetch.fetch_pool_files."""

from selectmoe.data.fetch import fetch_pool_files
from selectmoe.io import atomic_write_json
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return atomic_write_json(
        job.output.report,
        fetch_pool_files(**job.params.settings),
    )


run_rule(snakemake, main)

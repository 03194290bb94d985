"""Glue: rule fetch_pool -> selectmoe.data.fetch.fetch_less_pool."""

from selectmoe.data.fetch import fetch_less_pool
from selectmoe.io import atomic_write_json
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return atomic_write_json(
        job.output.report,
        fetch_less_pool(**job.params.settings),
    )


run_rule(snakemake, main)

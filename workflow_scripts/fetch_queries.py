"""Glue: rule fetch_queries -> selectmoe.data.less_queries.fetch_less_queries."""

from selectmoe.data.less_queries import fetch_less_queries
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    # data.fetch: the pool's archive (repo_id, filename, archive) holds the query sets too
    return fetch_less_queries(job.output.queries, job.params.tasks, **job.params.fetch)


run_rule(snakemake, main)

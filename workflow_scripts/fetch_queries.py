"""Glue: rule fetch_queries -> selectmoe.less_queries.fetch_less_queries."""

from selectmoe.less_queries import fetch_less_queries
from selectmoe.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    # data.fetch: the pool's archive (repo_id, filename, archive) holds the query sets too
    return fetch_less_queries(job.output.queries, job.params.tasks, **job.params.fetch)


run_rule(snakemake, main)

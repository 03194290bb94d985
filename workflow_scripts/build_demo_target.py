"""Glue: rule build_demo_target -> selectmoe.demo.build_demo_target."""

from selectmoe.demo import build_demo_target
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return build_demo_target(job.params.demo_dir)


run_rule(snakemake, main)

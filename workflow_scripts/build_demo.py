"""Glue: rule build_demo -> selectmoe.demo.build_demo."""

from selectmoe.demo import build_demo
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return build_demo(
        job.params.out_dir,
        seed=job.params.demo["seed"],
        **job.params.demo["params"],
        build_target=False,  # rule build_demo_target pretrains it, beside the base model
    )


run_rule(snakemake, main)

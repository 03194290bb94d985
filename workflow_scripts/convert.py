"""Glue: rule convert -> selectmoe.model.conversion.convert_olmoe."""

from selectmoe.model.conversion import convert_olmoe
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return convert_olmoe(
        job.params.source,
        job.output.model,
        quality_gate_init_mean=job.params.gate_init_mean,
        quality_gate_init_std=job.params.gate_init_std,
        seed=job.params.seed,
    )


run_rule(snakemake, main)

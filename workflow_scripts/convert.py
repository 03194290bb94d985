"""Glue: rule convert -> selectmoe.model.conversion.convert_olmoe."""

from selectmoe.model.conversion import convert_olmoe
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    conversion = job.params.conversion
    return convert_olmoe(
        conversion["source"],
        job.output.model,
        quality_gate_init_mean=conversion["gate_init_mean"],
        quality_gate_init_std=conversion["gate_init_std"],
        seed=conversion["seed"],
    )


run_rule(snakemake, main)

"""Glue: rules evaluate / evaluate_base -> selectmoe.workflow.launch.run_evaluation_stage."""

from selectmoe.workflow.launch import run_evaluation_stage
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    adapters = list(job.input.get("adapters", []))
    results = list(job.output.results)
    return run_evaluation_stage(
        pretrained=job.params.base_model,
        adapters=adapters or [None] * len(results),
        output_jsons=results,
        samples_jsonls=list(job.output.samples),
        evaluation=dict(job.params.evaluation),
        num_processes=int(job.resources.get("gpu", 0)),
    )


run_rule(snakemake, main)

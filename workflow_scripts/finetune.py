"""Glue: rule finetune -> selectmoe.workflow.launch.run_training_stage("finetune", ...)."""

from selectmoe.workflow.launch import run_training_stage
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return run_training_stage(
        "finetune",
        inputs={
            "base_model": job.params.base_model,
            "selected_data": job.input.selected,
            "output_dir": job.output.adapter,
        },
        settings=dict(job.params.settings),
        checkpoint_dir=job.params.checkpoint_dir,
        num_processes=int(job.resources.get("gpu", 0)),
    )


run_rule(snakemake, main)

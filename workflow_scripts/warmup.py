"""Glue: rule warmup -> selectmoe.workflow.launch.run_training_stage("warmup", ...)."""

from selectmoe.workflow.launch import run_training_stage
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return run_training_stage(
        "warmup",
        inputs={
            "model_dir": job.input.model,
            "pool_files": list(job.input.pool),
            "output_path": job.output.weights,
        },
        settings=dict(job.params.settings),
        checkpoint_dir=job.params.checkpoint_dir,
        num_processes=int(job.resources.get("gpu", 0)),
    )


run_rule(snakemake, main)

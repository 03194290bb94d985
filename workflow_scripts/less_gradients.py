"""Glue: rule less_gradients -> selectmoe.stages.less.run_less_gradients."""

from selectmoe.stages.less import LessSettings, run_less_gradients
from selectmoe.workflow.config import build_settings
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return run_less_gradients(
        base_model=job.params.model,
        warmup_dir=job.input.warmup,
        data_path=job.input.data[0],
        output=job.output.features,
        settings=build_settings(LessSettings, job.params.settings, section="targeted.less"),
        queries=job.params.queries,
    )


run_rule(snakemake, main)

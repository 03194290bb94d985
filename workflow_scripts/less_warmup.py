"""Glue: rule less_warmup -> selectmoe.stages.less.run_less_warmup."""

from selectmoe.stages.less import LessSettings, run_less_warmup
from selectmoe.workflow.config import build_settings
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return run_less_warmup(
        base_model=job.params.model,
        pool_paths=list(job.input.pool),
        output_dir=job.output.warmup,
        settings=build_settings(LessSettings, job.params.settings, section="targeted.less"),
    )


run_rule(snakemake, main)

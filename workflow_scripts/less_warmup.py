"""Glue: rule less_warmup -> selectmoe.less.run_less_warmup."""

from selectmoe.less import LessSettings, run_less_warmup
from selectmoe.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return run_less_warmup(
        base_model=job.params.model,
        pool_paths=list(job.input.pool),
        output_dir=job.output.warmup,
        settings=LessSettings(**job.params.settings),
    )


run_rule(snakemake, main)

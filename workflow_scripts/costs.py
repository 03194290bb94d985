"""Glue: rule costs -> selectmoe.evidence.costs.write_cost_ledger."""

from selectmoe.evidence.costs import write_cost_ledger
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return write_cost_ledger(
        list(job.params.points),
        summary_csv=job.input.summary,
        output_csv=job.output.csv,
        output_md=job.output.md,
        plot_path=job.output.plot,
    )


run_rule(snakemake, main)

"""Glue: rule costs -> selectmoe.costs.write_cost_ledger."""

from selectmoe.costs import write_cost_ledger
from selectmoe.provenance import job_provenance
from selectmoe.runtime import run_job

run_job(
    snakemake.log[0],  # noqa: F821
    snakemake.threads,  # noqa: F821
    lambda: write_cost_ledger(
        list(snakemake.params.points),  # noqa: F821
        summary_csv=snakemake.input.summary,  # noqa: F821
        output_csv=snakemake.output.csv,  # noqa: F821
        output_md=snakemake.output.md,  # noqa: F821
        plot_path=snakemake.output.plot,  # noqa: F821
    ),
    provenance=job_provenance(snakemake),  # noqa: F821
)

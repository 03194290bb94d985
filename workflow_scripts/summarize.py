"""Glue: rule summarize -> selectmoe.summary.summarize."""

from selectmoe.provenance import job_provenance
from selectmoe.runtime import run_job
from selectmoe.summary import SummarySettings, summarize

run_job(
    snakemake.log[0],  # noqa: F821
    snakemake.threads,  # noqa: F821
    lambda: summarize(
        list(snakemake.params.points),  # noqa: F821
        output_csv=snakemake.output.csv,  # noqa: F821
        output_md=snakemake.output.md,  # noqa: F821
        plot_path=snakemake.output.plot,  # noqa: F821
        settings=SummarySettings(**snakemake.params.settings),  # noqa: F821
    ),
    provenance=job_provenance(snakemake),  # noqa: F821
)

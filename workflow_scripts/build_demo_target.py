"""Glue: rule build_demo_target -> selectmoe.demo.build_demo_target."""

from selectmoe.demo import build_demo_target
from selectmoe.provenance import job_provenance
from selectmoe.runtime import run_job

run_job(
    snakemake.log[0],  # noqa: F821
    snakemake.threads,  # noqa: F821
    lambda: build_demo_target(snakemake.params.demo_dir),  # noqa: F821
    provenance=job_provenance(snakemake),  # noqa: F821
)

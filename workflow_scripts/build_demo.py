"""Glue: rule build_demo -> selectmoe.demo.build_demo."""

from selectmoe.demo import build_demo
from selectmoe.provenance import job_provenance
from selectmoe.runtime import run_job

run_job(
    snakemake.log[0],  # noqa: F821
    snakemake.threads,  # noqa: F821
    lambda: build_demo(
        snakemake.params.out_dir,  # noqa: F821
        seed=snakemake.params.seed,  # noqa: F821
        **snakemake.params.demo_params,  # noqa: F821
        build_target=False,  # rule build_demo_target pretrains it, beside the base model
    ),
    provenance=job_provenance(snakemake),  # noqa: F821
)

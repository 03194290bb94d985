"""Glue: rules evaluate / evaluate_base -> selectmoe.launch.run_evaluation_stage."""

from selectmoe.launch import run_evaluation_stage
from selectmoe.provenance import job_provenance
from selectmoe.runtime import run_job

adapters = list(snakemake.input.get("adapters", []))  # noqa: F821
results = list(snakemake.output.results)  # noqa: F821
run_job(
    snakemake.log[0],  # noqa: F821
    snakemake.threads,  # noqa: F821
    lambda: run_evaluation_stage(
        pretrained=snakemake.params.base_model,  # noqa: F821
        adapters=adapters or [None] * len(results),
        output_jsons=results,
        samples_jsonls=list(snakemake.output.samples),  # noqa: F821
        evaluation=dict(snakemake.params.evaluation),  # noqa: F821
        num_processes=int(snakemake.resources.get("gpu", 0)),  # noqa: F821
    ),
    gpus=int(snakemake.resources.get("gpu", 0)),  # noqa: F821
    provenance=job_provenance(snakemake),  # noqa: F821
)

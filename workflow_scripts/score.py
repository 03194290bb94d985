"""Glue: rules score / score_untrained -> selectmoe.scoring.score_dataset."""

from selectmoe.provenance import job_provenance
from selectmoe.runtime import run_job
from selectmoe.scoring import score_dataset

settings = snakemake.params.settings  # noqa: F821
run_job(
    snakemake.log[0],  # noqa: F821
    snakemake.threads,  # noqa: F821
    lambda: score_dataset(
        model_dir=snakemake.input.model,  # noqa: F821
        weights_path=snakemake.input.get("weights"),  # noqa: F821
        pool_files=list(snakemake.input.pool),  # noqa: F821
        dataset=snakemake.wildcards.dataset,  # noqa: F821
        output_path=snakemake.output.router_data,  # noqa: F821
        batch_size=settings["batch_size"],
        max_sequence_length=settings["max_sequence_length"],
        device=settings["device"],
        dtype=settings["dtype"],
        lm_statistics=settings.get("lm_statistics", True),
        ifd=snakemake.params.ifd,  # noqa: F821
    ),
    gpus=int(snakemake.resources.get("gpu", 0)),  # noqa: F821
    provenance=job_provenance(snakemake),  # noqa: F821
)

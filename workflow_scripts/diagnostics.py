"""Glue: rule diagnostics -> selectmoe.diagnostics.write_diagnostics."""

from pathlib import Path

from selectmoe.diagnostics import write_diagnostics
from selectmoe.provenance import job_provenance
from selectmoe.runtime import run_job

losses = list(snakemake.params.losses)  # noqa: F821
n_datasets = len(snakemake.params.datasets)  # noqa: F821
warmed = list(snakemake.input.warmed)  # noqa: F821
selected = list(snakemake.input.selections)  # noqa: F821
run_job(
    snakemake.log[0],  # noqa: F821
    snakemake.threads,  # noqa: F821
    lambda: write_diagnostics(
        warmed={
            loss: warmed[i * n_datasets : (i + 1) * n_datasets] for i, loss in enumerate(losses)
        },
        untrained=list(snakemake.input.untrained),  # noqa: F821
        output_dir=Path(snakemake.output.markdown).parent,  # noqa: F821
        labels_path=snakemake.input.get("labels") or None,  # noqa: F821
        selections=dict(zip(snakemake.params.selections, selected, strict=True)),  # noqa: F821
        pool_files=list(snakemake.input.pool),  # noqa: F821
        methods=list(snakemake.params.methods),  # noqa: F821
        definitions=snakemake.params.definitions,  # noqa: F821
    ),
    provenance=job_provenance(snakemake),  # noqa: F821
)

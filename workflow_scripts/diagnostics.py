"""Glue: rule diagnostics -> selectmoe.evidence.diagnostics.write_diagnostics."""

from pathlib import Path

from selectmoe.evidence.diagnostics import write_diagnostics
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    losses = list(job.params.losses)
    n_datasets = len(job.params.datasets)
    warmed = list(job.input.warmed)
    selected = list(job.input.selections)
    return write_diagnostics(
        warmed={
            loss: warmed[i * n_datasets : (i + 1) * n_datasets] for i, loss in enumerate(losses)
        },
        untrained=list(job.input.untrained),
        output_dir=Path(job.output.markdown).parent,
        labels_path=job.input.get("labels") or None,
        selections=dict(zip(job.params.selections, selected, strict=True)),
        pool_files=list(job.input.pool),
        methods=list(job.params.methods),
        definitions=job.params.definitions,
        targeted=job.params.targeted,
    )


run_rule(snakemake, main)

"""Glue: rule diagnostics -> selectmoe.evidence.diagnostics.write_diagnostics."""

from pathlib import Path

from selectmoe.evidence.diagnostics import write_diagnostics
from selectmoe.evidence.overlap import SelectionRun
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return write_diagnostics(
        warmed=job.params.warmed,
        untrained=list(job.input.untrained),
        output_dir=Path(job.output.markdown).parent,
        labels_path=job.input.get("labels") or None,
        selections=[
            SelectionRun(path=path, **run)
            for run, path in zip(job.params.selections, job.input.selections, strict=True)
        ],
        pool_files=list(job.input.pool),
        method_scores=job.params.method_scores,
        definitions=job.params.definitions,
    )


run_rule(snakemake, main)

"""Glue: rule artefact -> selectmoe.workflow.artefacts.make_artefact."""

from selectmoe.workflow.artefacts import make_artefact
from selectmoe.workflow.runtime import named_files, run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return make_artefact(
        job.wildcards.name,
        job.wildcards.key,
        inputs=named_files(job.input),
        output=job.output.artefact,
    )


run_rule(snakemake, main)

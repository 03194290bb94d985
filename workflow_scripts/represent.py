"""Glue: rule represent -> selectmoe.stages.representations.run_representations."""

from selectmoe.stages.representations import RepresentationSettings, run_representations
from selectmoe.workflow.config import build_settings
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    return run_representations(
        model_source=job.params.model,
        data_path=job.input.data[0],
        output=job.output.features,
        settings=build_settings(
            RepresentationSettings, job.params.settings, section="targeted.rds"
        ),
        queries=job.params.queries,
    )


run_rule(snakemake, main)

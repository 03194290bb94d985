"""Glue: rule represent -> selectmoe.representations.run_representations."""

from selectmoe.config import build_settings
from selectmoe.representations import RepresentationSettings, run_representations
from selectmoe.runtime import run_rule


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

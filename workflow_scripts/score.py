"""Glue: rules score / score_untrained -> selectmoe.stages.scoring.score_dataset."""

from selectmoe.stages.scoring import score_dataset
from selectmoe.workflow.runtime import run_rule


def main(job):
    """The rule's work, given the Snakemake job object."""
    settings = job.params.settings
    return score_dataset(
        model_dir=job.input.model,
        weights_path=job.input.get("weights"),
        pool_files=list(job.input.pool),
        dataset=job.wildcards.dataset,
        output_path=job.output.router_data,
        batch_size=settings["batch_size"],
        max_sequence_length=settings["max_sequence_length"],
        device=settings["device"],
        dtype=settings["dtype"],
        lm_statistics=settings.get("lm_statistics", True),
        ifd=job.params.ifd,
        template=settings["template"],
    )


run_rule(snakemake, main)

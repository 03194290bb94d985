"""Glue: rule select -> selectmoe.workflow.select_job.run_select_job."""

from selectmoe.workflow.runtime import named_files, run_rule
from selectmoe.workflow.select_job import run_select_job


def main(job):
    """The rule's work, given the Snakemake job object."""
    settings = job.params.selection
    return run_select_job(
        inputs=named_files(job.input),
        output_jsonl=job.output.selected,
        output_json=job.output.info,
        output_scores=job.output.scores,
        plot_dir=job.output.plots,
        method=settings["method"],
        selection_percentage=settings["percentage"],
        clustering_method=settings.get("clustering_method", "kmeans"),
        clustering_params=dict(settings.get("clustering_params", {})),
        seed=settings["seed"],
        debug_print=settings["debug_print"],
        method_definitions=settings.get("method_definitions") or {},
    )


run_rule(snakemake, main)

"""Glue: rules select_routed / select_random / select_reference / select_full ->
selectmoe.selection.run_selection."""

from selectmoe.provenance import job_provenance
from selectmoe.runtime import run_job
from selectmoe.selection import run_selection

selection = snakemake.params.selection  # noqa: F821
run_job(
    snakemake.log[0],  # noqa: F821
    snakemake.threads,  # noqa: F821
    lambda: run_selection(
        list(snakemake.input.get("router_data", [])),  # noqa: F821
        list(snakemake.input.pool),  # noqa: F821
        output_jsonl=snakemake.output.selected,  # noqa: F821
        output_json=snakemake.output.info,  # noqa: F821
        plot_dir=snakemake.output.plots,  # noqa: F821
        method=snakemake.params.method,  # noqa: F821
        selection_percentage=snakemake.params.percentage,  # noqa: F821
        clustering_method=selection.get("clustering_method", "kmeans"),
        clustering_params=dict(selection.get("clustering_params", {})),
        seed=selection["seed"],
        debug_print=selection["debug_print"],
        labels_path=snakemake.input.get("labels") or None,  # noqa: F821
        method_definitions=selection.get("method_definitions") or {},
    ),
    gpus=int(snakemake.resources.get("gpu", 0)),  # noqa: F821
    provenance=job_provenance(snakemake),  # noqa: F821
)

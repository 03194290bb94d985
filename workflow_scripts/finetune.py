"""Glue: rule finetune -> selectmoe.finetune.run_finetune."""

from selectmoe.cli import build_settings
from selectmoe.finetune import FinetuneSettings, run_finetune
from selectmoe.runtime import run_job

run_job(
    snakemake.log[0],  # noqa: F821
    snakemake.threads,  # noqa: F821
    lambda: run_finetune(
        base_model=snakemake.params.base_model,  # noqa: F821
        selected_data=snakemake.input.selected,  # noqa: F821
        output_dir=snakemake.output.adapter,  # noqa: F821
        settings=build_settings(
            FinetuneSettings,
            dict(snakemake.params.settings),  # noqa: F821
            section="finetune",
        ),
    ),
)

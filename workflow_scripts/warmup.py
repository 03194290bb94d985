"""Glue: rule warmup -> selectmoe.warmup.run_warmup."""

from selectmoe.cli import build_settings
from selectmoe.runtime import run_job
from selectmoe.warmup import WarmupSettings, run_warmup

run_job(
    snakemake.log[0],  # noqa: F821
    snakemake.threads,  # noqa: F821
    lambda: run_warmup(
        model_dir=snakemake.input.model,  # noqa: F821
        pool_files=list(snakemake.input.pool),  # noqa: F821
        output_path=snakemake.output.weights,  # noqa: F821
        settings=build_settings(
            WarmupSettings,
            dict(snakemake.params.settings),  # noqa: F821
            section="warmup",
        ),
    ),
)

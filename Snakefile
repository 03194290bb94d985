from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/data.smk"
include: "rules/convert.smk"
include: "rules/warmup.smk"
include: "rules/score.smk"
include: "rules/select.smk"
include: "rules/finetune.smk"
include: "rules/evaluate.smk"
include: "rules/summarize.smk"


rule all:
    input:
        get_final_output(),
    default_target: True

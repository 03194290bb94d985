import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# Jobs import the selectmoe package from this checkout (also in --sdm conda environments, on
# cluster nodes, which inherit the environment, and when another workflow uses this one as a
# module: the directory is this Snakefile's, not the caller's).
WORKFLOW_DIR = str(workflow.current_basedir)
sys.path.insert(0, WORKFLOW_DIR)  # the Snakefile's own imports (rules/common.smk)
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [WORKFLOW_DIR, os.getenv("PYTHONPATH")]))
)


# The demo config is the default; a --configfile replaces it instead of merging into it, so that
# the paper's targets and tasks are not mixed with the demo's.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/data.smk"
include: "rules/convert.smk"
include: "rules/warmup.smk"
include: "rules/score.smk"
include: "rules/targeted.smk"
include: "rules/select.smk"
include: "rules/finetune.smk"
include: "rules/evaluate.smk"
include: "rules/summarize.smk"
include: "rules/diagnostics.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),

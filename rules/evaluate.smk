rule evaluate:
    """lm-eval on the target with the adapter of every replicate and seed of one row: the base
    model is loaded once for all of them, and a failure loses one row's evaluations."""
    input:
        unpack(get_inputs("evaluate")),
    output:
        results=LAYOUT.eval_results_pattern("results"),
        samples=LAYOUT.eval_results_pattern("samples"),
        provenance=LAYOUT.evaluation_provenance("{target}", "{row}"),
    log:
        get_log("evaluate"),
    benchmark:
        get_benchmark("evaluate")
    conda:
        "../envs/selectmoe.yaml"
    threads: get_threads("evaluate")
    resources:
        gpu=get_gpus("evaluate"),
        mem_mb=get_mem_mb("evaluate"),
    params:
        base_model=lambda wildcards: str(LAYOUT.target_model(wildcards.target)),
        evaluation=SETTINGS.evaluation(),
    script:
        "../workflow_scripts/evaluate.py"


# The target without adapter: the reference every selection must beat (the same job, no
# adapters, one results file).
use rule evaluate as evaluate_base with:
    input:
        unpack(get_inputs("evaluate_base")),
    output:
        results=[LAYOUT.base_results("{target}", "results")],
        samples=[LAYOUT.base_results("{target}", "samples")],
        provenance=provenance(LAYOUT.base_results("{target}", "results")),
    log:
        get_log("evaluate_base"),
    benchmark:
        get_benchmark("evaluate_base")

rule evaluate:
    """lm-eval on the target with each seed's adapter of one selection: the base model is loaded
    once for all of them, and a failure loses one selection's evaluations."""
    input:
        get_target_input,
        get_eval_inputs,
        adapters=lambda wildcards: [
            f"{RESULTS}/finetune/{wildcards.target}/{wildcards.selection}/seed{seed}/adapter"
            for seed in SEEDS
        ],
    output:
        results=[
            f"{RESULTS}/eval/{{target}}/{{selection}}/seed{seed}/results.json"
            for seed in SEEDS
        ],
        samples=[
            f"{RESULTS}/eval/{{target}}/{{selection}}/seed{seed}/samples.jsonl"
            for seed in SEEDS
        ],
        provenance=f"{RESULTS}/eval/{{target}}/{{selection}}/evaluate.provenance.json",
    log:
        f"{RESULTS}/logs/evaluate/{{target}}/{{selection}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{target}}/{{selection}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: threads("evaluate")
    resources:
        gpu=gpus("evaluate"),
        mem_mb=mem_mb("evaluate"),
    params:
        base_model=lambda wildcards: get_target_model(wildcards.target),
        evaluation=config["evaluation"],
    script:
        "../workflow_scripts/evaluate.py"


# The target without adapter: the reference every selection must beat (the same job, no
# adapters, one results file).
use rule evaluate as evaluate_base with:
    input:
        get_target_input,
        get_eval_inputs,
    output:
        results=[f"{RESULTS}/eval/{{target}}/base/results.json"],
        samples=[f"{RESULTS}/eval/{{target}}/base/samples.jsonl"],
        provenance=f"{RESULTS}/eval/{{target}}/base/results.json.provenance.json",
    log:
        f"{RESULTS}/logs/evaluate/{{target}}/base.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{target}}/base.tsv"

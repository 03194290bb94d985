rule evaluate:
    """lm-eval on the target with each seed's adapter of one selection: the base model is loaded
    once for all of them, and a failure loses one selection's evaluations."""
    input:
        get_target_input,
        get_eval_inputs,
        adapters=lambda wildcards: [
            adapter_dir(wildcards.target, wildcards.selection, seed) for seed in SEEDS
        ],
    output:
        results=seed_results("{target}", "{selection}", "results"),
        samples=seed_results("{target}", "{selection}", "samples"),
        provenance=f"{eval_dir('{target}', '{selection}')}/evaluate.provenance.json",
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
        results=[f"{eval_dir('{target}', 'base')}/results.json"],
        samples=[f"{eval_dir('{target}', 'base')}/samples.jsonl"],
        provenance=provenance(f"{eval_dir('{target}', 'base')}/results.json"),
    log:
        f"{RESULTS}/logs/evaluate/{{target}}/base.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{target}}/base.tsv"

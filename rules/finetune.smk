rule finetune:
    """LoRA on the target with one selection, once per finetune seed."""
    input:
        get_target_input,
        selected=selection_file("{selection}", "selected_data.jsonl"),
    output:
        adapter=directory(adapter_dir("{target}", "{selection}", "{seed}")),
        provenance=provenance(adapter_dir("{target}", "{selection}", "{seed}")),
    log:
        f"{RESULTS}/logs/finetune/{{target}}/{{selection}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune/{{target}}/{{selection}}/seed{{seed}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: threads("finetune")
    resources:
        gpu=gpus("finetune"),
        mem_mb=mem_mb("finetune"),
    params:
        checkpoint_dir=lambda wildcards: f"{RESULTS}/checkpoints/finetune/{wildcards.target}/{wildcards.selection}/seed{wildcards.seed}",
        base_model=lambda wildcards: get_target_model(wildcards.target),
        settings=lambda wildcards: finetune_settings(wildcards.target, wildcards.seed),
    script:
        "../workflow_scripts/finetune.py"

rule finetune:
    """LoRA on the target with one replicate's selection of a row, once per finetune seed."""
    input:
        unpack(get_inputs("finetune")),
    output:
        adapter=directory(LAYOUT.adapter("{target}", "{row}", "{rep}", "{seed}")),
        provenance=provenance(LAYOUT.adapter("{target}", "{row}", "{rep}", "{seed}")),
    log:
        get_log("finetune"),
    benchmark:
        get_benchmark("finetune")
    conda:
        "../envs/selectmoe.yaml"
    threads: get_threads("finetune")
    resources:
        gpu=get_gpus("finetune"),
        mem_mb=get_mem_mb("finetune"),
    params:
        checkpoint_dir=lambda wildcards: LAYOUT.finetune_checkpoints(
            wildcards.target, wildcards.row, wildcards.rep, wildcards.seed
        ),
        base_model=lambda wildcards: str(LAYOUT.target_model(wildcards.target)),
        settings=lambda wildcards: SETTINGS.finetune(
            wildcards.target, wildcards.rep, wildcards.seed
        ),
    script:
        "../workflow_scripts/finetune.py"

rule warmup:
    input:
        unpack(get_inputs("warmup")),
    output:
        weights=LAYOUT.warmup_weights("{loss}", "{rep}"),
        provenance=provenance(LAYOUT.warmup_weights("{loss}", "{rep}")),
    log:
        get_log("warmup"),
    benchmark:
        get_benchmark("warmup")
    conda:
        "../envs/selectmoe.yaml"
    threads: get_threads("warmup")
    resources:
        gpu=get_gpus("warmup"),
        mem_mb=get_mem_mb("warmup"),
    params:
        checkpoint_dir=lambda wildcards: LAYOUT.warmup_checkpoints(
            wildcards.loss, wildcards.rep
        ),
        settings=lambda wildcards: SETTINGS.warmup(wildcards.loss, wildcards.rep),
    script:
        "../workflow_scripts/warmup.py"

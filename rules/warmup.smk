rule warmup:
    input:
        model=converted_dir(),
        pool=get_all_pool_files,
    output:
        weights=warmup_weights("{loss}"),
        provenance=provenance(warmup_weights("{loss}")),
    log:
        f"{RESULTS}/logs/warmup/{{loss}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/warmup/{{loss}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: threads("warmup")
    resources:
        gpu=gpus("warmup"),
        mem_mb=mem_mb("warmup"),
    params:
        checkpoint_dir=lambda wildcards: f"{RESULTS}/checkpoints/warmup/{wildcards.loss}",
        settings=lambda wildcards: warmup_settings(wildcards.loss),
    script:
        "../workflow_scripts/warmup.py"

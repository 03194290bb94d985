rule score:
    input:
        model=converted_dir(),
        weights=warmup_weights("{loss}"),
        pool=lambda wildcards: get_pool_files(wildcards.dataset),
    output:
        router_data=router_data("{loss}", "{dataset}"),
        provenance=provenance(router_data("{loss}", "{dataset}")),
    log:
        f"{RESULTS}/logs/score/{{loss}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score/{{loss}}/{{dataset}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: threads("score")
    resources:
        gpu=gpus("score"),
        mem_mb=mem_mb("score"),
    params:
        settings=config["scoring"],
        ifd=needs_ifd(),
    script:
        "../workflow_scripts/score.py"


rule score_untrained:
    """The control of the quality diagnostics: the converted model's untrained gates."""
    input:
        model=converted_dir(),
        pool=lambda wildcards: get_pool_files(wildcards.dataset),
    output:
        router_data=router_data("untrained", "{dataset}"),
        provenance=provenance(router_data("untrained", "{dataset}")),
    log:
        f"{RESULTS}/logs/score/untrained/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score/untrained/{{dataset}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: threads("score")
    resources:
        gpu=gpus("score"),
        mem_mb=mem_mb("score"),
    params:
        settings={**config["scoring"], "lm_statistics": False},
        ifd=False,
    script:
        "../workflow_scripts/score.py"

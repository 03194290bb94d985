rule score:
    input:
        unpack(get_inputs("score")),
    output:
        router_data=LAYOUT.router_data("{loss}", "{dataset}", "{rep}"),
        provenance=provenance(LAYOUT.router_data("{loss}", "{dataset}", "{rep}")),
    log:
        get_log("score"),
    benchmark:
        get_benchmark("score")
    conda:
        "../envs/selectmoe.yaml"
    threads: get_threads("score")
    resources:
        gpu=get_gpus("score"),
        mem_mb=get_mem_mb("score"),
    params:
        settings=SETTINGS.scoring(),
        ifd=LAYOUT.needs_ifd(),
    script:
        "../workflow_scripts/score.py"


rule score_untrained:
    """The converted model's gates and LM: the diagnostics' control, excess_loss's reference."""
    input:
        unpack(get_inputs("score_untrained")),
    output:
        router_data=LAYOUT.router_data(LAYOUT.UNTRAINED, "{dataset}"),
        provenance=provenance(LAYOUT.router_data(LAYOUT.UNTRAINED, "{dataset}")),
    log:
        get_log("score_untrained"),
    benchmark:
        get_benchmark("score_untrained")
    conda:
        "../envs/selectmoe.yaml"
    threads: get_threads("score_untrained")
    resources:
        gpu=get_gpus("score_untrained"),
        mem_mb=get_mem_mb("score_untrained"),
    params:
        settings=SETTINGS.scoring(),
        ifd=False,
    script:
        "../workflow_scripts/score.py"

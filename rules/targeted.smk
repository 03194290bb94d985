# The targeted methods rds (RDS+) and less (LESS): features of every pool dataset and of the
# query set, computed with the targeted model (targeted.model, else the first target's model).


rule represent:
    """RDS+: the pooled final hidden states of one pool dataset or of the query set."""
    input:
        unpack(get_inputs("represent")),
    output:
        features=LAYOUT.features("rds", "{part}"),
        provenance=provenance(LAYOUT.features("rds", "{part}")),
    log:
        get_log("represent"),
    benchmark:
        get_benchmark("represent")
    conda:
        "../envs/selectmoe.yaml"
    threads: get_threads("represent")
    resources:
        gpu=get_gpus("represent"),
        mem_mb=get_mem_mb("represent"),
    params:
        model=str(LAYOUT.targeted_model()),
        queries=lambda wildcards: wildcards.part == LAYOUT.QUERIES,
        settings=SETTINGS.representations(),
    script:
        "../workflow_scripts/represent.py"


rule less_warmup:
    """LESS: LoRA on a random share of the pool, one checkpoint per epoch."""
    input:
        unpack(get_inputs("less_warmup")),
    output:
        warmup=directory(LAYOUT.less_warmup("{rep}")),
        provenance=provenance(LAYOUT.less_warmup("{rep}")),
    log:
        get_log("less_warmup"),
    benchmark:
        get_benchmark("less_warmup")
    conda:
        "../envs/selectmoe.yaml"
    threads: get_threads("less_warmup")
    resources:
        gpu=get_gpus("less_warmup"),
        mem_mb=get_mem_mb("less_warmup"),
    params:
        model=str(LAYOUT.targeted_model()),
        settings=lambda wildcards: SETTINGS.less(wildcards.rep),
    script:
        "../workflow_scripts/less_warmup.py"


rule less_gradients:
    """LESS: projected per-example LoRA gradients of one pool dataset (Adam-normalised) or of
    the query set, at every warmup checkpoint; resumable from its shards."""
    input:
        unpack(get_inputs("less_gradients")),
    output:
        features=LAYOUT.features("less", "{part}", "{rep}"),
        provenance=provenance(LAYOUT.features("less", "{part}", "{rep}")),
    log:
        get_log("less_gradients"),
    benchmark:
        get_benchmark("less_gradients")
    conda:
        "../envs/selectmoe.yaml"
    threads: get_threads("less_gradients")
    resources:
        gpu=get_gpus("less_gradients"),
        mem_mb=get_mem_mb("less_gradients"),
    params:
        model=str(LAYOUT.targeted_model()),
        queries=lambda wildcards: wildcards.part == LAYOUT.QUERIES,
        settings=lambda wildcards: SETTINGS.less(wildcards.rep),
    script:
        "../workflow_scripts/less_gradients.py"

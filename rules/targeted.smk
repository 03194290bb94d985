# The targeted methods rds (RDS+) and less (LESS): features of every pool dataset and of the
# query set, computed with the targeted model (targeted.model, else the first target's model);
# the selections themselves are in select.smk (select_targeted).


rule represent:
    """RDS+: the pooled final hidden states of one pool dataset or of the query set."""
    input:
        data=targeted_part_data,
        model=get_targeted_model_input,
    output:
        features=targeted_features("rds", "{part}"),
        provenance=provenance(targeted_features("rds", "{part}")),
    log:
        f"{RESULTS}/logs/represent/{{part}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/represent/{{part}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: threads("represent")
    resources:
        gpu=gpus("represent"),
        mem_mb=mem_mb("represent"),
    params:
        model=get_targeted_model(),
        queries=lambda wildcards: wildcards.part == QUERIES,
        settings=TARGETED.get("rds", {}),
    script:
        "../workflow_scripts/represent.py"


rule less_warmup:
    """LESS: LoRA on a random share of the pool, one checkpoint per epoch."""
    input:
        pool=get_all_pool_files,
        model=get_targeted_model_input,
    output:
        warmup=directory(less_warmup_dir()),
        provenance=provenance(less_warmup_dir()),
    log:
        f"{RESULTS}/logs/less_warmup.log",
    benchmark:
        f"{RESULTS}/benchmarks/less_warmup.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: threads("less_warmup")
    resources:
        gpu=gpus("less_warmup"),
        mem_mb=mem_mb("less_warmup"),
    params:
        model=get_targeted_model(),
        settings=less_settings(),
    script:
        "../workflow_scripts/less_warmup.py"


rule less_gradients:
    """LESS: projected per-example LoRA gradients of one pool dataset (Adam-normalised) or of
    the query set, at every warmup checkpoint; resumable from its shards."""
    input:
        data=targeted_part_data,
        warmup=less_warmup_dir(),
        model=get_targeted_model_input,
    output:
        features=targeted_features("less", "{part}"),
        provenance=provenance(targeted_features("less", "{part}")),
    log:
        f"{RESULTS}/logs/less_gradients/{{part}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/less_gradients/{{part}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: threads("less_gradients")
    resources:
        gpu=gpus("less_gradients"),
        mem_mb=mem_mb("less_gradients"),
    params:
        model=get_targeted_model(),
        queries=lambda wildcards: wildcards.part == QUERIES,
        settings=less_settings(),
    script:
        "../workflow_scripts/less_gradients.py"

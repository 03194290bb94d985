rule cluster:
    """The k-means sweep over one loss type's routing features, once for every clustered
    selection (methods and percentages)."""
    input:
        router_data=expand(
            router_data("{{loss}}", "{dataset}"),
            dataset=DATASETS,
        ),
    output:
        clusters=clusters_path("{loss}"),
        provenance=provenance(clusters_path("{loss}")),
    log:
        f"{RESULTS}/logs/cluster/{{loss}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cluster/{{loss}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: threads("select")
    resources:
        gpu=gpus("select"),
        mem_mb=mem_mb("select"),
    params:
        selection=clustering_settings(),
    script:
        "../workflow_scripts/cluster.py"


rule select_routed:
    """Selections that use the router data (and, for clustered methods, the loss type's
    clusters)."""
    input:
        router_data=expand(
            router_data("{{loss}}", "{dataset}"),
            dataset=DATASETS,
        ),
        clusters=lambda wildcards: (
            clusters_path(wildcards.loss)
            if methods.uses_clusters(
                wildcards.method, SELECTION.get("method_definitions", {})
            )
            else []
        ),
        pool=get_all_pool_files,
    output:
        selected=selection_file("{method}/{loss}/p{pct}", "selected_data.jsonl"),
        provenance=provenance(
            selection_file("{method}/{loss}/p{pct}", "selected_data.jsonl")
        ),
        info=selection_file("{method}/{loss}/p{pct}", "selection.json"),
        plots=directory(selection_file("{method}/{loss}/p{pct}", "plots")),
    log:
        f"{RESULTS}/logs/select/{{method}}/{{loss}}/p{{pct}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/select/{{method}}/{{loss}}/p{{pct}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        method=lambda wildcards: wildcards.method,
        percentage=lambda wildcards: float(wildcards.pct),
        selection=lambda wildcards: selection_settings(wildcards.method),
    script:
        "../workflow_scripts/select.py"


rule select_random:
    """The random baseline: depends on the pool only, not on any loss type."""
    input:
        pool=get_all_pool_files,
    output:
        selected=selection_file("random/p{pct}", "selected_data.jsonl"),
        provenance=provenance(selection_file("random/p{pct}", "selected_data.jsonl")),
        info=selection_file("random/p{pct}", "selection.json"),
        plots=directory(selection_file("random/p{pct}", "plots")),
    log:
        f"{RESULTS}/logs/select/random/p{{pct}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/select/random/p{{pct}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        method="random",
        percentage=lambda wildcards: float(wildcards.pct),
        selection=selection_settings(),
    script:
        "../workflow_scripts/select.py"


rule select_reference:
    """oracle / anti_oracle: clean or planted examples first, from the pool's quality labels."""
    input:
        pool=get_all_pool_files,
        labels=get_labels_file() or [],
    output:
        selected=selection_file("{reference}/p{pct}", "selected_data.jsonl"),
        provenance=provenance(
            selection_file("{reference}/p{pct}", "selected_data.jsonl")
        ),
        info=selection_file("{reference}/p{pct}", "selection.json"),
        plots=directory(selection_file("{reference}/p{pct}", "plots")),
    log:
        f"{RESULTS}/logs/select/{{reference}}/p{{pct}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/select/{{reference}}/p{{pct}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        method=lambda wildcards: wildcards.reference,
        percentage=lambda wildcards: float(wildcards.pct),
        selection=selection_settings(),
    script:
        "../workflow_scripts/select.py"


rule select_full:
    """The `full` reference: the whole pool."""
    input:
        pool=get_all_pool_files,
    output:
        selected=selection_file("full", "selected_data.jsonl"),
        provenance=provenance(selection_file("full", "selected_data.jsonl")),
        info=selection_file("full", "selection.json"),
        plots=directory(selection_file("full", "plots")),
    log:
        f"{RESULTS}/logs/select/full.log",
    benchmark:
        f"{RESULTS}/benchmarks/select/full.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        method="full",
        percentage=1.0,
        selection=selection_settings(),
    script:
        "../workflow_scripts/select.py"


rule select_targeted:
    """rds / less: the pool examples most similar to the query set (targeted methods)."""
    input:
        features=expand(
            targeted_features("{{targeted}}", "{dataset}"),
            dataset=DATASETS,
        ),
        queries=targeted_features("{targeted}", QUERIES),
        pool=get_all_pool_files,
    output:
        selected=selection_file("{targeted}/p{pct}", "selected_data.jsonl"),
        provenance=provenance(
            selection_file("{targeted}/p{pct}", "selected_data.jsonl")
        ),
        info=selection_file("{targeted}/p{pct}", "selection.json"),
        plots=directory(selection_file("{targeted}/p{pct}", "plots")),
    log:
        f"{RESULTS}/logs/select/{{targeted}}/p{{pct}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/select/{{targeted}}/p{{pct}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        method=lambda wildcards: wildcards.targeted,
        percentage=lambda wildcards: float(wildcards.pct),
        selection=selection_settings(),
    script:
        "../workflow_scripts/select.py"

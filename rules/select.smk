rule cluster:
    """The k-means sweep over one loss type's routing features, once for every clustered
    selection (methods and percentages)."""
    input:
        unpack(get_inputs("cluster")),
    output:
        clusters=LAYOUT.clusters("{loss}", "{rep}"),
        provenance=provenance(LAYOUT.clusters("{loss}", "{rep}")),
    log:
        get_log("cluster"),
    benchmark:
        get_benchmark("cluster")
    conda:
        "../envs/selectmoe.yaml"
    threads: get_threads("cluster")
    resources:
        gpu=get_gpus("cluster"),
        mem_mb=get_mem_mb("cluster"),
    params:
        selection=lambda wildcards: SETTINGS.clustering(wildcards.rep),
    script:
        "../workflow_scripts/cluster.py"


rule artefact:
    """An artefact that a plugin's kind of method reads (selectmoe/workflow/artefacts.py)."""
    input:
        unpack(get_inputs("artefact")),
    output:
        artefact=LAYOUT.path("artefacts/{name}/{key}", name="{name}", key="{key}"),
        provenance=provenance(
            LAYOUT.path("artefacts/{name}/{key}", name="{name}", key="{key}")
        ),
    log:
        get_log("artefact"),
    benchmark:
        get_benchmark("artefact")
    conda:
        "../envs/selectmoe.yaml"
    threads: get_threads("artefact")
    resources:
        gpu=get_gpus("artefact"),
        mem_mb=get_mem_mb("artefact"),
    script:
        "../workflow_scripts/artefact.py"


rule select:
    """Every selection of the sweep: the method's kind names what it reads
    (selectmoe/selection/kinds.py)."""
    input:
        unpack(get_inputs("select")),
    output:
        selected=LAYOUT.selection_file("{selection}", "selected_data.jsonl"),
        provenance=provenance(
            LAYOUT.selection_file("{selection}", "selected_data.jsonl")
        ),
        info=LAYOUT.selection_file("{selection}", "selection.json"),
        scores=LAYOUT.selection_file("{selection}", "scores.npz"),
        plots=directory(LAYOUT.selection_file("{selection}", "plots")),
    log:
        get_log("select"),
    benchmark:
        get_benchmark("select")
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        selection=lambda wildcards: SETTINGS.selection(wildcards.selection),
    script:
        "../workflow_scripts/select.py"

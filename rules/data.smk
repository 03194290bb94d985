rule validate_data:
    input:
        pool=get_all_pool_files,
    output:
        report=f"{RESULTS}/data/validate_data.json",
        provenance=f"{RESULTS}/data/validate_data.json.provenance.json",
    log:
        f"{RESULTS}/logs/validate_data.log",
    benchmark:
        f"{RESULTS}/benchmarks/validate_data.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    script:
        "../workflow_scripts/validate_data.py"


# The real pool (not the demo, whose build_demo rule makes its own): fetched and unpacked only
# when a pool file is missing; a user's own copies are kept (update(): not removed before the job,
# restored if it fails). Without network it fails at once, naming the files to put in place.
if not is_demo():

    rule fetch_pool:
        output:
            pool=update(get_all_pool_files()),
            provenance=f"{RESULTS}/data/fetch_pool.json.provenance.json",
            report=f"{RESULTS}/data/fetch_pool.json",
        log:
            f"{RESULTS}/logs/fetch_pool.log",
        benchmark:
            f"{RESULTS}/benchmarks/fetch_pool.tsv"
        localrule: True
        conda:
            "../envs/selectmoe.yaml"
        threads: 1
        params:
            # Arguments of selectmoe.data.fetch.fetch_less_pool. A function of `output`, so that
            # Snakemake leaves it out of its params rerun trigger: where the pool comes from does
            # not change what it is, and switching to a local archive after a download must not
            # re-run fetch_pool and everything after it.
            settings=lambda wildcards, output: {
                "pool_dir": config["data"]["pool_dir"],
                "datasets": DATASETS,
                "file_pattern": config["data"]["file_pattern"],
                **config["data"]["fetch"],
            },
        script:
            "../workflow_scripts/fetch_pool.py"


# The query sets of the targeted methods for a real pool: LESS's dev / few-shot sets of
# targeted.queries.tasks, from the pool's archive (a user's own file, targeted.queries.file, is
# read as it is). Without network it fails at once, naming the file to put in place.
if not is_demo() and not TARGETED.get("queries", {}).get("file"):

    rule fetch_queries:
        output:
            queries=get_queries_file(),
            provenance=provenance(get_queries_file()),
        log:
            f"{RESULTS}/logs/fetch_queries.log",
        benchmark:
            f"{RESULTS}/benchmarks/fetch_queries.tsv"
        localrule: True
        conda:
            "../envs/selectmoe.yaml"
        threads: 1
        params:
            tasks=TARGETED.get("queries", {}).get("tasks", ["mmlu", "bbh", "tydiqa"]),
            # where the archive comes from does not change the queries (see fetch_pool)
            fetch=lambda wildcards, output: config["data"]["fetch"],
        script:
            "../workflow_scripts/fetch_queries.py"

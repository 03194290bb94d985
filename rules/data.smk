rule validate_data:
    input:
        unpack(get_inputs("validate_data")),
    output:
        report=LAYOUT.data_report(),
        provenance=provenance(LAYOUT.data_report()),
    log:
        get_log("validate_data"),
    benchmark:
        get_benchmark("validate_data")
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
            pool=update(LAYOUT.pool_files()),
            provenance=provenance(LAYOUT.output("data/fetch_pool.json")),
            report=LAYOUT.output("data/fetch_pool.json"),
        log:
            get_log("fetch_pool"),
        benchmark:
            get_benchmark("fetch_pool")
        localrule: True
        conda:
            "../envs/selectmoe.yaml"
        threads: 1
        params:
            # A function of `output`, so that Snakemake leaves it out of its params rerun
            # trigger: where the pool comes from does not change what it is, and switching to a
            # local archive after a download must not re-run fetch_pool and everything after it.
            settings=lambda wildcards, output: SETTINGS.fetch_pool(),
        script:
            "../workflow_scripts/fetch_pool.py"


# The query sets of the targeted methods for a real pool: LESS's dev / few-shot sets of
# targeted.queries.tasks, from the pool's archive (a user's own file, targeted.queries.file, is
# read as it is). Without network it fails at once, naming the file to put in place.
if not is_demo() and not LAYOUT.own_queries_file():

    rule fetch_queries:
        output:
            queries=LAYOUT.queries_file(),
            provenance=provenance(LAYOUT.queries_file()),
        log:
            get_log("fetch_queries"),
        benchmark:
            get_benchmark("fetch_queries")
        localrule: True
        conda:
            "../envs/selectmoe.yaml"
        threads: 1
        params:
            tasks=SETTINGS.query_tasks(),
            # where the archive comes from does not change the queries (see fetch_pool)
            fetch=lambda wildcards, output: config["data"]["fetch"],
        script:
            "../workflow_scripts/fetch_queries.py"

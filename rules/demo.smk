# The demo's own pool, models and tasks (only with demo.activate: the real pool comes from
# fetch_pool in rules/data.smk). The target model is pretrained by a job of its own, beside the
# base model's pretraining.
if is_demo():

    rule build_demo:
        output:
            manifest=demo_outputs()["manifest"],
            provenance=f"{DEMO_DIR}/demo_manifest.json.provenance.json",
            noise_labels=demo_outputs()["noise_labels"],
            pool=demo_outputs()["pool"],
            base_model=directory(demo_outputs()["base_model"]),
            tokenizer=directory(f"{DEMO_DIR}/tokenizer"),
            tasks=directory(demo_outputs()["tasks"]),
            queries=f"{DEMO_DIR}/queries.jsonl",
        log:
            f"{RESULTS}/logs/build_demo.log",
        benchmark:
            f"{RESULTS}/benchmarks/build_demo.tsv"
        conda:
            "../envs/selectmoe.yaml"
        threads: 1
        params:
            out_dir=lambda wildcards, output: os.path.dirname(output.manifest),
            seed=config.get("demo", {}).get("seed", 0),
            demo_params=config.get("demo", {}).get("params", {}),
        script:
            "../workflow_scripts/build_demo.py"

    rule build_demo_target:
        input:
            manifest=demo_outputs()["manifest"],
            tokenizer=f"{DEMO_DIR}/tokenizer",
            tasks=demo_outputs()["tasks"],
        output:
            target_model=directory(demo_outputs()["target_model"]),
            provenance=f"{DEMO_DIR}/target_model.provenance.json",
        log:
            f"{RESULTS}/logs/build_demo_target.log",
        benchmark:
            f"{RESULTS}/benchmarks/build_demo_target.tsv"
        conda:
            "../envs/selectmoe.yaml"
        threads: 1
        params:
            demo_dir=lambda wildcards, input: os.path.dirname(input.manifest),
        script:
            "../workflow_scripts/build_demo_target.py"

# The demo's own pool, models and tasks (only with demo.activate: the real pool comes from
# fetch_pool in rules/data.smk). The target model is pretrained by a job of its own, beside the
# base model's pretraining.
if is_demo():

    rule build_demo:
        output:
            manifest=LAYOUT.demo_file("demo_manifest.json"),
            provenance=provenance(LAYOUT.demo_file("demo_manifest.json")),
            noise_labels=LAYOUT.demo_file("noise_labels.jsonl"),
            pool=LAYOUT.pool_files(),
            base_model=directory(LAYOUT.demo_file("base_model")),
            tokenizer=directory(LAYOUT.demo_file("tokenizer")),
            tasks=directory(LAYOUT.demo_file("tasks")),
            queries=LAYOUT.demo_file("queries.jsonl"),
        log:
            get_log("build_demo"),
        benchmark:
            get_benchmark("build_demo")
        conda:
            "../envs/selectmoe.yaml"
        threads: 1
        params:
            out_dir=lambda wildcards, output: os.path.dirname(output.manifest),
            demo=SETTINGS.demo(),
        script:
            "../workflow_scripts/build_demo.py"

    rule build_demo_target:
        input:
            unpack(get_inputs("build_demo_target")),
        output:
            target_model=directory(LAYOUT.target_model(LAYOUT.targets[0])),
            provenance=provenance(LAYOUT.target_model(LAYOUT.targets[0])),
        log:
            get_log("build_demo_target"),
        benchmark:
            get_benchmark("build_demo_target")
        conda:
            "../envs/selectmoe.yaml"
        threads: 1
        params:
            demo_dir=lambda wildcards, input: os.path.dirname(input.manifest),
        script:
            "../workflow_scripts/build_demo_target.py"

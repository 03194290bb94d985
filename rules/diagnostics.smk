# Quality diagnostics: the gate's score per loss type against the untrained-gate control and, where
# the pool has quality labels, how well it separates clean from planted examples, and how much
# planted noise each selection kept (selectmoe.evidence.diagnostics).


rule diagnostics:
    input:
        warmed=[
            router_data(loss, dataset)
            for loss in report_losses()
            for dataset in DATASETS
        ],
        untrained=[router_data("untrained", dataset) for dataset in DATASETS],
        labels=get_labels_file() or [],
        selections=(
            [selection_file(s, "selected_data.jsonl") for s in selection_paths()]
            if has_labels()
            else []
        ),
        pool=get_all_pool_files,
        targeted=(
            [
                targeted_features(method, part)
                for method in TARGETED_IN_SWEEP
                for part in [*DATASETS, QUERIES]
            ]
            if has_labels()
            else []
        ),
    output:
        tables=[
            report(
                f"{DIAGNOSTICS_DIR}/quality_{loss}.csv",
                caption="../report/diagnostics.rst",
                category="Quality diagnostics",
                subcategory=loss,
                labels={"loss type": loss, "content": "table"},
            )
            for loss in report_losses()
        ],
        plots=[
            report(
                f"{DIAGNOSTICS_DIR}/quality_{loss}.png",
                caption="../report/diagnostics.rst",
                category="Quality diagnostics",
                subcategory=loss,
                labels={"loss type": loss, "content": "plot"},
            )
            for loss in report_losses()
        ],
        method_scores=(
            [
                report(
                    f"{DIAGNOSTICS_DIR}/method_scores.csv",
                    caption="../report/method_scores.rst",
                    category="Quality diagnostics",
                    subcategory="scores",
                )
            ]
            if has_labels() and report_losses()
            else []
        ),
        shares=(
            [
                report(
                    f"{DIAGNOSTICS_DIR}/planted_share.csv",
                    caption="../report/planted_share.rst",
                    category="Quality diagnostics",
                    subcategory="selections",
                )
            ]
            if has_labels()
            else []
        ),
        markdown=f"{DIAGNOSTICS_DIR}/diagnostics.md",
        provenance=f"{DIAGNOSTICS_DIR}/diagnostics.md.provenance.json",
    log:
        f"{RESULTS}/logs/diagnostics.log",
    benchmark:
        f"{RESULTS}/benchmarks/diagnostics.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        losses=report_losses(),
        datasets=DATASETS,
        selections=selection_paths() if has_labels() else [],
        methods=METHODS,
        definitions=DEFINITIONS,
        # per targeted method its pool datasets' features files and its queries' (also inputs)
        targeted=(
            {
                method: [
                    [targeted_features(method, dataset) for dataset in DATASETS],
                    targeted_features(method, QUERIES),
                ]
                for method in TARGETED_IN_SWEEP
            }
            if has_labels()
            else {}
        ),
    script:
        "../workflow_scripts/diagnostics.py"

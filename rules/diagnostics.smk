# Quality diagnostics: the gate's score per loss type against the untrained-gate control and, where
# the pool has quality labels, how well each method's score (as its selection saved it) separates
# clean from planted examples, and how much planted noise each selection kept
# (selectmoe.evidence.diagnostics).


rule diagnostics:
    input:
        unpack(get_inputs("diagnostics")),
    output:
        tables=[
            report(
                LAYOUT.diagnostics_file(f"quality_{loss}.csv"),
                caption="../report/diagnostics.rst",
                category="Quality diagnostics",
                subcategory=loss,
                labels={"loss type": loss, "content": "table"},
            )
            for loss in LAYOUT.routed_losses()
        ],
        plots=[
            report(
                LAYOUT.diagnostics_file(f"quality_{loss}.png"),
                caption="../report/diagnostics.rst",
                category="Quality diagnostics",
                subcategory=loss,
                labels={"loss type": loss, "content": "plot"},
            )
            for loss in LAYOUT.routed_losses()
        ],
        method_scores=(
            [
                report(
                    LAYOUT.diagnostics_file("method_scores.csv"),
                    caption="../report/method_scores.rst",
                    category="Quality diagnostics",
                    subcategory="scores",
                )
            ]
            if LAYOUT.has_labels() and LAYOUT.routed_losses()
            else []
        ),
        shares=(
            [
                report(
                    LAYOUT.diagnostics_file("planted_share.csv"),
                    caption="../report/planted_share.rst",
                    category="Quality diagnostics",
                    subcategory="selections",
                )
            ]
            if LAYOUT.has_labels()
            else []
        ),
        markdown=LAYOUT.diagnostics_file("diagnostics.md"),
        provenance=provenance(LAYOUT.diagnostics_file("diagnostics.md")),
    log:
        get_log("diagnostics"),
    benchmark:
        get_benchmark("diagnostics")
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        warmed=LAYOUT.warmed_router_data(),
        selections=LAYOUT.selection_runs(),
        method_scores=LAYOUT.method_scores() if LAYOUT.has_labels() else {},
        definitions=LAYOUT.definitions,
    script:
        "../workflow_scripts/diagnostics.py"

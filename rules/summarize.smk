rule summarize:
    input:
        unpack(get_inputs("summarize")),
    output:
        csv=report(LAYOUT.output("summary.csv"), category="Summary"),
        provenance=provenance(LAYOUT.output("summary.csv")),
        md=LAYOUT.output("summary.md"),
        plot=report(LAYOUT.output("summary_accuracy.png"), category="Summary"),
    log:
        get_log("summarize"),
    benchmark:
        get_benchmark("summarize")
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        points=LAYOUT.summary_points(),
        settings=SETTINGS.summary(),
    script:
        "../workflow_scripts/summarize.py"


rule costs:
    """The cost ledger: seconds, memory and bytes of every point beside its score (not in the
    summary, which stays byte-identical: timings vary between runs)."""
    input:
        unpack(get_inputs("costs")),
    output:
        csv=report(LAYOUT.output("costs.csv"), category="Summary"),
        md=LAYOUT.output("costs.md"),
        plot=report(
            LAYOUT.output("costs_accuracy.png"),
            caption="../report/costs.rst",
            category="Summary",
        ),
        provenance=provenance(LAYOUT.output("costs.csv")),
    log:
        get_log("costs"),
    benchmark:
        get_benchmark("costs")
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        points=LAYOUT.cost_points(),
    script:
        "../workflow_scripts/costs.py"

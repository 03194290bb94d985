rule summarize:
    input:
        results=[r for p in summary_points() for r in p["results"]],
        samples=[s for p in summary_points() for s in p["samples"]],
        provenance=[p["provenance"] for p in summary_points()],
        selections=[
            p["selection_json"] for p in summary_points() if "selection_json" in p
        ],
    output:
        csv=report(f"{RESULTS}/summary.csv", category="Summary"),
        provenance=f"{RESULTS}/summary.csv.provenance.json",
        md=f"{RESULTS}/summary.md",
        plot=report(f"{RESULTS}/summary_accuracy.png", category="Summary"),
    log:
        f"{RESULTS}/logs/summarize.log",
    benchmark:
        f"{RESULTS}/benchmarks/summarize.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        points=summary_points(),
        settings=config["summary"],
    script:
        "../workflow_scripts/summarize.py"


rule costs:
    """The cost ledger: seconds, memory and bytes of every point beside its score (not in the
    summary, which stays byte-identical: timings vary between runs)."""
    input:
        summary=f"{RESULTS}/summary.csv",
    output:
        csv=report(f"{RESULTS}/costs.csv", category="Summary"),
        md=f"{RESULTS}/costs.md",
        plot=report(
            f"{RESULTS}/costs_accuracy.png",
            caption="../report/costs.rst",
            category="Summary",
        ),
        provenance=f"{RESULTS}/costs.csv.provenance.json",
    log:
        f"{RESULTS}/logs/costs.log",
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        points=cost_points(),
    script:
        "../workflow_scripts/costs.py"

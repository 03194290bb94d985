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

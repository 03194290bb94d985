# Figures and tables for `snakemake --report report.html` (selectmoe.evidence.report). Their paths come
# from rules/common.smk (REPORT_DIR, report_outputs), which makes them part of the default target.


rule report_warmup:
    """Warmup training curves from the history in full_rank_weights.pt."""
    input:
        weights=warmup_weights("{loss}"),
    output:
        losses=report(
            f"{REPORT_DIR}/warmup/{{loss}}/losses.png",
            caption="../report/warmup_losses.rst",
            category="Warmup",
            subcategory="{loss}",
            labels={"loss type": "{loss}", "figure": "LM and quality loss"},
        ),
        provenance=f"{REPORT_DIR}/warmup/{{loss}}/losses.png.provenance.json",
        good_ratio=report(
            f"{REPORT_DIR}/warmup/{{loss}}/good_ratio.png",
            caption="../report/warmup_good_ratio.rst",
            category="Warmup",
            subcategory="{loss}",
            labels={"loss type": "{loss}", "figure": "good ratio per layer"},
        ),
    log:
        f"{RESULTS}/logs/report/warmup/{{loss}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/warmup/{{loss}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    script:
        "../workflow_scripts/report_warmup.py"


rule report_quality_scores:
    """Per-layer quality score of every dataset, from the router data of one loss type."""
    input:
        router_data=expand(
            router_data("{{loss}}", "{dataset}"),
            dataset=DATASETS,
        ),
    output:
        plot=report(
            f"{REPORT_DIR}/quality_scores/{{loss}}.png",
            caption="../report/quality_scores.rst",
            category="Quality scores",
            subcategory="{loss}",
            labels={"loss type": "{loss}", "content": "histograms"},
        ),
        provenance=f"{REPORT_DIR}/quality_scores/{{loss}}.png.provenance.json",
        stats=report(
            f"{REPORT_DIR}/quality_scores/{{loss}}.csv",
            caption="../report/quality_scores_table.rst",
            category="Quality scores",
            subcategory="{loss}",
            labels={"loss type": "{loss}", "content": "statistics"},
        ),
    log:
        f"{RESULTS}/logs/report/quality_scores/{{loss}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/quality_scores/{{loss}}.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    script:
        "../workflow_scripts/report_quality_scores.py"


rule report_quality_losses:
    """Every quality-loss type as a function of the gate output (no input: selectmoe.model.losses)."""
    output:
        plot=report(
            f"{REPORT_DIR}/quality_losses.png",
            caption="../report/quality_losses.rst",
            category="Quality losses",
        ),
        provenance=f"{REPORT_DIR}/quality_losses.png.provenance.json",
    log:
        f"{RESULTS}/logs/report/quality_losses.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/quality_losses.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        loss_params={
            key: config["warmup"][key]
            for key in (
                "beta_target_mean",
                "beta_target_var",
                "w_mean",
                "w_var",
                "lambda_var",
                "sample_wise_averaging",
            )
        },
    script:
        "../workflow_scripts/report_quality_losses.py"


rule report_selections:
    """One row per selection; carries the selections' plots into the report."""
    input:
        info=[selection_file(s, "selection.json") for s in selection_paths()],
        # The selections' plot directories (outputs of rules/select.smk), flagged for the report:
        # the four plots of the methods that cluster, the score distribution of the others that
        # read the router data; random and full have no scores or clusters to show.
        plots=[
            report(
                selection_file(s, "plots"),
                patterns=(
                    ["{plot}.png"]
                    if methods.uses_clusters(
                        parse_selection(s)[0], SELECTION.get("method_definitions", {})
                    )
                    else ["{plot,score_distribution}.png"]
                ),
                caption="../report/selection_plots.rst",
                category="Selection",
                subcategory=s,
                labels={"selection": s, "plot": "{plot}"},
            )
            for s in selection_paths()
            if s.startswith(tuple(f"{method}/" for method in ROUTER_METHODS))
        ],
    output:
        table=report(
            f"{REPORT_DIR}/selections.csv",
            caption="../report/selections.rst",
            category="Selection",
            subcategory="overview",
        ),
        provenance=f"{REPORT_DIR}/selections.csv.provenance.json",
    log:
        f"{RESULTS}/logs/report/selections.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/selections.tsv"
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        names=selection_paths(),
    script:
        "../workflow_scripts/report_selections.py"


# The demo plants low-quality examples and records them in noise_labels.jsonl, read only here.
if is_demo():

    rule report_noise:
        """Share of the planted low-quality examples that each selection kept."""
        input:
            labels=demo_outputs()["noise_labels"],
            selected=[
                selection_file(s, "selected_data.jsonl") for s in selection_paths()
            ],
        output:
            plot=report(
                f"{REPORT_DIR}/noise_kept.png",
                caption="../report/noise_kept.rst",
                category="Planted noise (demo)",
            ),
            provenance=f"{REPORT_DIR}/noise_kept.png.provenance.json",
            table=report(
                f"{REPORT_DIR}/noise_kept.csv",
                caption="../report/noise_kept_table.rst",
                category="Planted noise (demo)",
            ),
        log:
            f"{RESULTS}/logs/report/noise_kept.log",
        benchmark:
            f"{RESULTS}/benchmarks/report/noise_kept.tsv"
        conda:
            "../envs/selectmoe.yaml"
        threads: 1
        params:
            names=selection_paths(),
        script:
            "../workflow_scripts/report_noise.py"

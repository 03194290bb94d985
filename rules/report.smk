# Figures and tables for `snakemake --report report.html` (selectmoe.evidence's figures). Their
# paths come from the layout (LAYOUT.report_outputs), which makes them part of the default target.


rule report_warmup:
    """Warmup training curves from the history in full_rank_weights.pt."""
    input:
        unpack(get_inputs("report_warmup")),
    output:
        losses=report(
            LAYOUT.report_file("warmup/{loss}/losses.png"),
            caption="../report/warmup_losses.rst",
            category="Warmup",
            subcategory="{loss}",
            labels={"loss type": "{loss}", "figure": "LM and quality loss"},
        ),
        provenance=provenance(LAYOUT.report_file("warmup/{loss}/losses.png")),
        good_ratio=report(
            LAYOUT.report_file("warmup/{loss}/good_ratio.png"),
            caption="../report/warmup_good_ratio.rst",
            category="Warmup",
            subcategory="{loss}",
            labels={"loss type": "{loss}", "figure": "good ratio per layer"},
        ),
    log:
        get_log("report_warmup"),
    benchmark:
        get_benchmark("report_warmup")
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    script:
        "../workflow_scripts/report_warmup.py"


rule report_quality_scores:
    """Per-layer quality score of every dataset, from the router data of one loss type."""
    input:
        unpack(get_inputs("report_quality_scores")),
    output:
        plot=report(
            LAYOUT.report_file("quality_scores/{loss}.png"),
            caption="../report/quality_scores.rst",
            category="Quality scores",
            subcategory="{loss}",
            labels={"loss type": "{loss}", "content": "histograms"},
        ),
        provenance=provenance(LAYOUT.report_file("quality_scores/{loss}.png")),
        stats=report(
            LAYOUT.report_file("quality_scores/{loss}.csv"),
            caption="../report/quality_scores_table.rst",
            category="Quality scores",
            subcategory="{loss}",
            labels={"loss type": "{loss}", "content": "statistics"},
        ),
    log:
        get_log("report_quality_scores"),
    benchmark:
        get_benchmark("report_quality_scores")
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    script:
        "../workflow_scripts/report_quality_scores.py"


rule report_quality_losses:
    """Every quality-loss type as a function of the gate output (no input: selectmoe.model.losses)."""
    output:
        plot=report(
            LAYOUT.report_file("quality_losses.png"),
            caption="../report/quality_losses.rst",
            category="Quality losses",
        ),
        provenance=provenance(LAYOUT.report_file("quality_losses.png")),
    log:
        get_log("report_quality_losses"),
    benchmark:
        get_benchmark("report_quality_losses")
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        loss_params=SETTINGS.quality_loss_parameters(),
    script:
        "../workflow_scripts/report_quality_losses.py"


rule report_selections:
    """One row per selection; carries the selections' plots into the report."""
    input:
        info=get_inputs("report_selections")(None)["info"],
        # The selections' plot directories (outputs of rules/select.smk), flagged for the report:
        # the four plots of the methods that cluster, the score distribution of the others that
        # score; random and full have no scores or clusters to show.
        plots=[
            report(
                LAYOUT.selection_file(s.path, "plots"),
                patterns=(
                    ["{plot}.png"]
                    if uses_clusters(s.method, LAYOUT.definitions)
                    else ["{plot,score_distribution}.png"]
                ),
                caption="../report/selection_plots.rst",
                category="Selection",
                subcategory=s.path,
                labels={"selection": s.path, "plot": "{plot}"},
            )
            for s in LAYOUT.selections()
            if LAYOUT.kind(s.method).uses_loss
        ],
    output:
        table=report(
            LAYOUT.report_file("selections.csv"),
            caption="../report/selections.rst",
            category="Selection",
            subcategory="overview",
        ),
        provenance=provenance(LAYOUT.report_file("selections.csv")),
    log:
        get_log("report_selections"),
    benchmark:
        get_benchmark("report_selections")
    conda:
        "../envs/selectmoe.yaml"
    threads: 1
    params:
        names=LAYOUT.selection_paths(),
    script:
        "../workflow_scripts/report_selections.py"


# The demo plants low-quality examples and records them in noise_labels.jsonl, read only here.
if is_demo():

    rule report_noise:
        """Share of the planted low-quality examples that each selection kept."""
        input:
            unpack(get_inputs("report_noise")),
        output:
            plot=report(
                LAYOUT.report_file("noise_kept.png"),
                caption="../report/noise_kept.rst",
                category="Planted noise (demo)",
            ),
            provenance=provenance(LAYOUT.report_file("noise_kept.png")),
            table=report(
                LAYOUT.report_file("noise_kept.csv"),
                caption="../report/noise_kept_table.rst",
                category="Planted noise (demo)",
            ),
        log:
            get_log("report_noise"),
        benchmark:
            get_benchmark("report_noise")
        conda:
            "../envs/selectmoe.yaml"
        threads: 1
        params:
            names=LAYOUT.selection_paths(),
        script:
            "../workflow_scripts/report_noise.py"

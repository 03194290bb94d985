rule convert:
    input:
        unpack(get_inputs("convert")),
    output:
        model=directory(LAYOUT.converted_model()),
        provenance=provenance(LAYOUT.converted_model()),
    log:
        get_log("convert"),
    benchmark:
        get_benchmark("convert")
    conda:
        "../envs/selectmoe.yaml"
    threads: get_threads("convert")
    resources:
        mem_mb=get_mem_mb("convert"),
    params:
        conversion=SETTINGS.conversion(),
    script:
        "../workflow_scripts/convert.py"


rule verify_conversion:
    input:
        unpack(get_inputs("verify_conversion")),
    output:
        report=LAYOUT.conversion_report(),
        provenance=provenance(LAYOUT.conversion_report()),
    log:
        get_log("verify_conversion"),
    benchmark:
        get_benchmark("verify_conversion")
    conda:
        "../envs/selectmoe.yaml"
    threads: get_threads("verify_conversion")
    resources:
        mem_mb=get_mem_mb("verify_conversion"),
    params:
        source=SETTINGS.conversion()["source"],
    script:
        "../workflow_scripts/verify_conversion.py"

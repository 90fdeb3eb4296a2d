localrules:
    all,
    aggregate,


rule aggregate:
    """Sort the manifest's rows into processed/failed CSVs beside it, write report.html and logs/images/ and
    upload the report, then delete its processing file; outcome/<m>.json says "finished" last."""
    input:
        manifest=manifest_csv,
        statuses=batch_status_files,
    output:
        summary="outcome/{manifest}.json",
    log:
        "logs/aggregate/{manifest}.log",
    conda:
        "../environment.yml"
    script:
        os.path.join(workflow.basedir, "scripts", "aggregate.py")

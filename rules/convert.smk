rule convert_batch:
    """Fetch, convert (COG + JPEG), verify and upload one batch of images; record each image's outcome."""
    input:
        manifest=manifest_csv,
    output:
        status="status/{manifest}/batch-{batch}.jsonl",
    log:
        "logs/convert/{manifest}/batch-{batch}.log",
    threads: config["threads_per_job"]
    resources:
        mem_mb=config["mem_mb_per_job"],
        disk_mb=config["disk_mb_per_job"],
        htcondor_request_mem_mb=config["mem_mb_per_job"],
        htcondor_request_disk_mb=config["disk_mb_per_job"],
    conda:
        "../environment.yml"
    script:
        os.path.join(workflow.basedir, "scripts", "convert_batch.py")

rule convert_batch:
    """Fetch, convert (COG + JPEG), upload (and verify: direct; confirm_batch does it with presigned URLs) one batch
    of images; record each image's outcome."""
    input:
        unpack(convert_inputs),
    output:
        records=CONVERT_OUTPUT,
    log:
        "logs/convert/{manifest}/batch-{batch}.log",
    threads: batch_threads()
    resources:
        mem_mb=lambda wildcards, attempt: batch_request(wildcards, attempt).mem_mb,
        disk_mb=lambda wildcards, attempt: batch_request(wildcards, attempt).disk_mb,
        htcondor_request_mem_mb=lambda wildcards, attempt: batch_request(wildcards, attempt).mem_mb,
        htcondor_request_disk_mb=lambda wildcards, attempt: batch_request(wildcards, attempt).disk_mb,
    conda:
        "../environment.yml"
    script:
        os.path.join(workflow.basedir, "scripts", "convert_batch.py")


if PRESIGNED:

    localrules:
        presign_batch,
        confirm_batch,

    rule presign_batch:
        """On the access point: decide each row (input HEAD, skip-if-done) and sign its GET and PUTs."""
        input:
            manifest=manifest_csv,
            qa=qa_verdict,
        output:
            urls=temp("urls/{manifest}/batch-{batch}.json"),
        log:
            "logs/presign/{manifest}/batch-{batch}.log",
        conda:
            "../environment.yml"
        script:
            os.path.join(workflow.basedir, "scripts", "presign_batch.py")

    rule confirm_batch:
        """On the access point: confirm the job's uploads (HEAD: size, ETag, token), remove a bad object,
        write the batch's status file."""
        input:
            manifest=manifest_csv,
            urls="urls/{manifest}/batch-{batch}.json",
            records="uploads/{manifest}/batch-{batch}.jsonl",
        output:
            status="status/{manifest}/batch-{batch}.jsonl",
        log:
            "logs/confirm/{manifest}/batch-{batch}.log",
        conda:
            "../environment.yml"
        script:
            os.path.join(workflow.basedir, "scripts", "confirm_batch.py")

if QA_ENABLED:

    localrules:
        qa_delivery,

    rule qa_delivery:
        """On the access point, before any batch of the manifest: read every row's header and a decimated
        overview through a presigned GET (range reads), check the delivery, write the findings (qa/<m>.csv,
        uploaded beside the outcome CSVs) and the rows that fail (qa/<m>.json: their batches leave them out)."""
        input:
            manifest=manifest_csv,
        output:
            findings="qa/{manifest}.csv",
            verdict="qa/{manifest}.json",
        log:
            "logs/qa/{manifest}.log",
        conda:
            "../environment.yml"
        script:
            os.path.join(workflow.basedir, "scripts", "qa_delivery.py")

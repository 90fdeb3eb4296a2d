"""Work: what a job runs: manifests, a batch job, the aggregate, per-image logs, the report."""

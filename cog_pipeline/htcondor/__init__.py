"""HTCondor: the Crondor that ticks, one driver job per run, and Snakemake's job settings.

One module per part:

- :mod:`.descriptions`: submit descriptions of the Crondor and the drivers, quoting, tags, constraints
  (no schedd needed);
- :mod:`.settings`: the site settings file (software delivery, hold policy) and the profile;
- :mod:`.staging`: a run directory's copy of the workflow and the driver's Snakemake arguments;
- :mod:`.schedd`: queueing, listing and removing the pipeline's jobs;
- :mod:`.supervisor`: what a driver job runs (hold policy, clean-up);
- ``python -m cog_pipeline.htcondor``: the supervisor's entry point and helpers for manual use.

Everything the pipeline queues carries custom attributes, so one constraint selects it:
``CogPipeline == true``, ``CogPipelinePattern`` (the manifest glob), ``CogPipelineRole``
(``crondor``, ``driver`` or ``job``) and, for a run's driver and jobs, ``CogPipelineRun`` (the run id).
Functions that talk to a schedd raise :class:`~cog_pipeline.core.errors.PipelineError` when none is
reachable. Nothing here reads an S3 key file: only key *file paths* are handled, and only
transferred to jobs by HTCondor.
"""

from .schedd import (JOB_STATUS, NO_SCHEDD, WAITING, check_schedd, cleanup_run, pipeline_jobs, run_has_jobs,
                     start_crondor, stop_pipeline, submit, submit_driver)
from .settings import (DEFAULT_SETTINGS, JOB_WRAPPER, PROFILE_CONFIG, PROFILE_DIR, SOFTWARE_MODES, HoldPolicy,
                       Settings, Software, SoftwarePlan, load_profile, load_settings, profile_default_resources,
                       profile_held_timeout, settings_path, software_plan)
from .staging import (JOB_ENV, STAGE_DIR, ca_bundle_file, fresh_jobdir, job_resources, key_files, snakemake_args,
                      stage_workflow, transfer_files, write_job_env)
from .descriptions import (COMPLETED, CRONDOR_BATCH_PREFIX, DRIVER_BATCH_PREFIX, ENV_PASSTHROUGH, HELD, IDLE,
                     MAX_RUNNING_ENV, REMOVED, ROLE_CRONDOR, ROLE_DRIVER, ROLE_JOB, RUNNING, SETTINGS_ENV,
                     SUSPENDED, TRANSFERRING, classad_literal, classad_string, cron_fields, crondor_submit,
                     driver_submit, entry_point, format_arguments, format_environment, passthrough_environment,
                     pattern_constraint, run_constraint, submit_value, tick_arguments)
from .supervisor import SUPERVISOR_LOG, apply_hold_policy, driver_removed, own_job_id, supervise

__all__ = ["apply_hold_policy", "ca_bundle_file", "check_schedd", "classad_literal", "classad_string", "cleanup_run",
    "COMPLETED", "cron_fields", "CRONDOR_BATCH_PREFIX", "crondor_submit", "DEFAULT_SETTINGS",
    "DRIVER_BATCH_PREFIX", "driver_removed", "driver_submit", "entry_point", "ENV_PASSTHROUGH",
    "format_arguments", "format_environment", "fresh_jobdir", "HELD", "HoldPolicy", "IDLE", "JOB_ENV",
    "job_resources", "JOB_STATUS", "JOB_WRAPPER", "key_files", "load_profile", "load_settings",
    "MAX_RUNNING_ENV", "NO_SCHEDD", "own_job_id", "passthrough_environment", "pattern_constraint",
    "pipeline_jobs", "PROFILE_CONFIG", "profile_default_resources", "PROFILE_DIR", "profile_held_timeout",
    "REMOVED", "ROLE_CRONDOR", "ROLE_DRIVER", "ROLE_JOB", "run_constraint", "run_has_jobs", "RUNNING",
    "Settings", "SETTINGS_ENV", "settings_path", "snakemake_args", "Software", "SOFTWARE_MODES",
    "software_plan", "SoftwarePlan", "STAGE_DIR", "stage_workflow", "start_crondor", "stop_pipeline",
    "submit", "submit_driver", "submit_value", "supervise", "SUPERVISOR_LOG", "SUSPENDED", "tick_arguments",
    "transfer_files", "TRANSFERRING", "WAITING", "write_job_env"]

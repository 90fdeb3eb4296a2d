#!/bin/sh
# Executable of every cog-pipeline HTCondor job (the plugin's `job_wrapper` resource).
#
# Arguments: Snakemake's job arguments (the plugin strips the leading "python -m snakemake").
# Settings: workflow/job.env, written per run by cog_pipeline.htcondor.snakemake_args(); it holds
# only names and paths (software mode, archive name, interpreter, key FILE names), never secrets.
#
# 1. with s3.transfer: direct only, makes the S3 key files private (chmod 600) and deletes them when
#    the job ends (with presigned, the pool's default, a job receives URLs and no key file: the list
#    COG_PIPELINE_PRIVATE_FILES is empty and this step does nothing);
# 2. finds Python: unpacks the environment archive (tarball), or uses the image's (container) or
#    the shared installation's (shared) interpreter;
# 3. runs `python -m snakemake "$@"` with the run's own copy of the cog_pipeline package first on
#    PYTHONPATH;
# 4. if Snakemake fails, creates every missing output HTCondor must transfer back (empty files),
#    so that the failure reaches Snakemake as an exit code instead of a hold (missing output
#    files hold a job under shared-fs-usage none), writes the reason into the batch's .log, and
#    exits with Snakemake's status.
set -u
umask 077

# Plugin 0.3.0 writes `environment = PATH="..."` (old syntax): the quotes become part of PATH,
# breaking its first and last entries. Strip them with the shell alone (sed may not be found yet).
PATH=${PATH:-}
PATH=${PATH#\"}
PATH=${PATH%\"}
PATH="${PATH:+$PATH:}/usr/local/bin:/usr/bin:/bin"
export PATH
# A batch job never talks to a schedd: say so, or the htcondor2 module the plugin imports warns
# about a missing condor_config in every job's .err (seen on a pool).
CONDOR_CONFIG=${CONDOR_CONFIG:-/dev/null}
export CONDOR_CONFIG

COG_PIPELINE_SOFTWARE=shared
COG_PIPELINE_PYTHON=
COG_PIPELINE_ENV_TARBALL=
COG_PIPELINE_PRIVATE_FILES=
if [ -f workflow/job.env ]; then
    . ./workflow/job.env
fi

for f in $COG_PIPELINE_PRIVATE_FILES; do
    if [ -f "$f" ]; then chmod 600 "$f"; fi
done

remove_private_files() {
    for f in $COG_PIPELINE_PRIVATE_FILES; do rm -f "$f"; done
}

# Create each missing file named in the job ad's TransferOutput (comma separated), and write the
# reason ($1) into those ending in .log: the batch log (logs/convert/<manifest>/batch-<b>.log) is
# where the failed rows' reason points, and it comes back to the access point.
leave_placeholders() {
    ad=${_CONDOR_JOB_AD:-.job.ad}
    [ -f "$ad" ] || return 0
    outputs=$(sed -n 's/^TransferOutput = "\(.*\)"$/\1/p' "$ad")
    old_ifs=$IFS
    IFS=,
    for p in $outputs; do
        p=$(printf '%s' "$p" | sed -e 's/^ *//' -e 's/ *$//')
        [ -n "$p" ] || continue
        if [ ! -e "$p" ]; then
            mkdir -p "$(dirname "$p")" && : > "$p"
            echo "job-wrapper: left an empty placeholder for missing output $p" >&2
        fi
        case "$p" in
            *.log) printf 'job-wrapper on %s: %s\n' "$(hostname 2>/dev/null || echo '?')" "$1" >> "$p" ;;
        esac
    done
    IFS=$old_ifs
}

fail() {
    echo "job-wrapper: $*" >&2
    leave_placeholders "$*"
    remove_private_files
    exit 1
}

here=$(pwd)
case "$COG_PIPELINE_SOFTWARE" in
    tarball)
        [ -n "$COG_PIPELINE_ENV_TARBALL" ] && [ -f "$COG_PIPELINE_ENV_TARBALL" ] \
            || fail "environment archive '$COG_PIPELINE_ENV_TARBALL' was not transferred"
        mkdir -p env && tar -xf "$COG_PIPELINE_ENV_TARBALL" -C env \
            || fail "cannot unpack $COG_PIPELINE_ENV_TARBALL (disk full? request more disk)"
        rm -f "$COG_PIPELINE_ENV_TARBALL"
        # conda-pack and venv-pack archives both carry bin/activate, which fixes their prefix.
        if [ -f env/bin/activate ]; then
            set +u; . env/bin/activate; set -u
        fi
        if [ -x env/bin/conda-unpack ]; then
            env/bin/conda-unpack || fail "conda-unpack failed"
        fi
        py="$here/env/bin/python"
        ;;
    container)
        py=${COG_PIPELINE_PYTHON:-python3}
        ;;
    shared)
        py=$COG_PIPELINE_PYTHON
        [ -n "$py" ] || fail "no interpreter configured for software mode 'shared'"
        ;;
    *)
        fail "unknown software mode '$COG_PIPELINE_SOFTWARE' (tarball, container or shared)"
        ;;
esac
command -v "$py" > /dev/null 2>&1 || [ -x "$py" ] \
    || fail "Python interpreter '$py' not found on $(hostname) (software mode $COG_PIPELINE_SOFTWARE)"

PYTHONPATH="$here/workflow${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH

"$py" -m snakemake "$@"
status=$?
if [ "$status" -ne 0 ]; then
    echo "job-wrapper: snakemake exited with status $status" >&2
    leave_placeholders "snakemake exited with status $status (the job's .err in logs/htcondor/ has its output)"
fi
remove_private_files
exit "$status"

#!/bin/sh
# The periodic work of the production shape (docker/compose.yaml, service `worker`).
#
# Runs `imaging-cloud` commands on a schedule in a plain loop, one after the other, never two
# at once. Run exactly one. Jobs on demand (restores of cold series) are not run here: the
# `jobs` service (`imaging-cloud worker`, RQ on Redis) runs those.
#
# WORKER_JOBS: ';'-separated "<every-seconds>:<imaging-cloud arguments>" entries. A job is
# started when its interval has passed since it was last started (and on the first round).
# A job whose command this image's `imaging-cloud` does not have (yet) is skipped with a
# notice; a failing job is logged with its exit code and the loop goes on.
# WORKER_TICK_SECONDS: how often the schedule is looked at (default 60).
# Settings (index, blob store, data dir) come from the IMAGING_CLOUD_* environment.
set -u

JOBS="${WORKER_JOBS:-3600:lifecycle classify;3600:audit verify;86400:lifecycle tier;86400:lifecycle verify;604800:lifecycle scrub}"
TICK="${WORKER_TICK_SECONDS:-60}"
STATE="${WORKER_STATE_DIR:-/tmp/imaging-cloud-worker}"
mkdir -p "$STATE"

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) worker: $*"; }

stopping=0
trap 'stopping=1; log "stopping after the current job"' TERM INT

run_due_jobs() {
    now=$(date +%s)
    old_ifs=$IFS
    IFS=';'
    for entry in $JOBS; do
        IFS=$old_ifs
        [ "$stopping" -eq 1 ] && return
        every=${entry%%:*}
        job=${entry#*:}
        [ -n "$job" ] || continue
        stamp="$STATE/$(printf '%s' "$job" | tr -c 'a-zA-Z0-9' '_')"
        last=$(cat "$stamp" 2>/dev/null || echo 0)
        [ $((now - last)) -ge "$every" ] || continue
        echo "$now" > "$stamp"
        # shellcheck disable=SC2086  # the job's words are imaging-cloud arguments
        if ! imaging-cloud $job --help > /dev/null 2>&1; then
            log "skipped '$job': this imaging-cloud has no such command yet"
            continue
        fi
        log "start '$job'"
        started=$(date +%s)
        # shellcheck disable=SC2086
        imaging-cloud $job
        status=$?
        log "end '$job': exit $status after $(($(date +%s) - started)) s"
    done
    IFS=$old_ifs
}

log "jobs: $JOBS (schedule checked every $TICK s)"
while [ "$stopping" -eq 0 ]; do
    run_due_jobs
    [ "$stopping" -eq 1 ] && break
    sleep "$TICK" &
    wait $! || true
done
log "stopped"

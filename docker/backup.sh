#!/bin/sh
# Index dumps of the production shape (docker/compose.yaml, service `backup`): every
# BACKUP_INTERVAL_SECONDS (default 3600) a custom-format pg_dump of the whole index to
# /backups/imaging-<UTC time>.dump, written aside and renamed when complete; the newest
# BACKUP_KEEP (default 48) are kept. Connection from PGHOST/PGUSER/PGDATABASE/PGPASSWORD.
# Restore: pg_restore --clean --if-exists -d imaging /backups/imaging-<time>.dump
# (docs/production.md). Copy /backups off the host: a dump on the database host is not a backup.
set -u

INTERVAL="${BACKUP_INTERVAL_SECONDS:-3600}"
KEEP="${BACKUP_KEEP:-48}"
log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) backup: $*"; }
trap 'log "stopping"; exit 0' TERM INT

while :; do
    name="imaging-$(date -u +%Y%m%dT%H%M%SZ).dump"
    if pg_dump --format=custom --compress=6 --file="/backups/.$name.partial" \
        && mv "/backups/.$name.partial" "/backups/$name"; then
        log "wrote $name ($(du -h "/backups/$name" | cut -f1))"
    else
        log "pg_dump failed; the previous dumps are kept"
        rm -f "/backups/.$name.partial"
    fi
    # newest first; drop everything after the first KEEP
    ls -1t /backups/imaging-*.dump 2>/dev/null | tail -n +"$((KEEP + 1))" | while read -r old; do
        rm -f "$old" && log "removed $(basename "$old")"
    done
    sleep "$INTERVAL" &
    wait $!
done

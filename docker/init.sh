#!/bin/sh
# One-shot start-up step of the production shape (docker/compose.yaml, service `init`), run
# before any API process starts:
#   1. the node's secrets in <data-dir>/keys (token.key signs access tokens, report-ref.key the
#      QR references printed on reports, deidentify.key the pseudonyms of exports), 32 random
#      bytes each, made once on the shared `cloud-keys` volume. Every API process and the
#      worker mount that same volume: a process with other keys would refuse the others'
#      tokens and print QR codes nobody else can open. Made here, once, so that two API
#      processes starting together never race to create them.
#   2. the index schema, brought to the newest migration by opening the archive once, so the
#      API processes do not run migrations concurrently.
# Settings come from the IMAGING_CLOUD_* environment, as for `imaging-cloud serve`.
set -eu

keys="${IMAGING_CLOUD_DATA_DIR:-/data}/keys"
umask 077
mkdir -p "$keys"
for name in token.key report-ref.key deidentify.key; do
    if [ ! -s "$keys/$name" ]; then
        head -c 32 /dev/urandom > "$keys/.$name.tmp"
        mv "$keys/.$name.tmp" "$keys/$name"
        echo "init: created $keys/$name"
    fi
done

python - <<'EOF'
from cloud.archive import Archive
from imaging_cloud.settings import load_settings

settings = load_settings()
Archive.open(settings.data_dir, settings.database_url, settings.blob_url).close()
print("init: index schema is at the newest migration")
EOF

#!/usr/bin/env bash
# Prints the nginx `location` of the benchmark upstream: `return 200 "ok\n"`, or with
# BODY_BYTES set, a file of that many bytes written under DIR (the first argument).
set -euo pipefail
if [ -z "${BODY_BYTES:-}" ]; then
  echo 'location / { return 200 "ok\n"; }'
  exit
fi
mkdir -p "$1/www"
head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x' > "$1/www/body"
echo "location / { root $1/www; default_type text/plain; try_files /body =404; }"

#!/usr/bin/env bash
# Add an expert to a running service through its admin API: pack the expert directory and upload it.
#
#   RR_ADMIN_KEY=change-me docker/add-expert.sh data/experts/cranfield            # publish a new expert
#   RR_ADMIN_KEY=change-me docker/add-expert.sh data/experts/cranfield --replace  # swap a published one
#
#   RR_URL         where the service listens (default http://127.0.0.1:8000, compose.yaml's port)
#   RR_ADMIN_KEY   the service's admin key (the container's RR_ADMIN_KEY; the admin API is off without it)
#
# The upload suits a container: the expert is built anywhere (`rr create-expert`, `rr index`, `rr pilots`,
# `rr train-expert`) and lands in the service's data volume under uploads/, validated before anything
# changes (README "### Admin"). An expert already inside the volume is published by path instead:
#
#   curl -sS --fail-with-body -X POST "$RR_URL/admin/experts" -H "Authorization: Bearer $RR_ADMIN_KEY" \
#        -H 'Content-Type: application/json' -d '{"path": "cranfield"}'
#
# Prints the published expert's description (JSON); exits non-zero, with the service's error, on refusal.
set -euo pipefail

usage="usage: RR_ADMIN_KEY=KEY $0 EXPERT_DIR [--replace]"
expert="${1:?$usage}"
replace=false
if [ "${2:-}" = "--replace" ]; then
    replace=true
elif [ -n "${2:-}" ]; then
    echo "$usage" >&2
    exit 2
fi
url="${RR_URL:-http://127.0.0.1:8000}"
if [ -z "${RR_ADMIN_KEY:-}" ]; then
    echo "add-expert.sh: set RR_ADMIN_KEY to the service's admin key" >&2
    exit 2
fi
if [ ! -f "$expert/manifest.json" ]; then
    echo "add-expert.sh: $expert is not an expert directory (no manifest.json)" >&2
    exit 2
fi

# .work/ holds builds in progress, never read by a server. The key goes to curl through a file
# descriptor, so it never appears in a process listing.
tar -czf - --exclude=.work -C "$(dirname "$expert")" "$(basename "$expert")" \
    | curl --silent --show-error --fail-with-body -X POST "$url/admin/experts?replace=$replace" \
        -H @<(printf 'Authorization: Bearer %s\n' "$RR_ADMIN_KEY") \
        -H 'Content-Type: application/gzip' \
        --data-binary @-
echo

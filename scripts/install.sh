#!/usr/bin/env bash
# Install router-retriever into a virtual environment: the one install procedure that `make install`
# (hence `make demo`, `make test` and CI's .ci/run) and the container image's build stage all run, so
# that what CI tests is what the image ships.
#
#   scripts/install.sh [--venv DIR] [--editable] [--extras LIST] [--check-offline]
#
#   --venv DIR        the virtual environment (default .venv); created with $PYTHON when it has no
#                     bin/python yet, reused otherwise
#   --editable        install the checkout in place (development); default: a regular install, as
#                     the image does, so the environment does not need the source tree afterwards
#   --extras LIST     optional dependency groups, e.g. dev or dev,bench
#   --check-offline   afterwards, load the bundled base encoder and embed one sentence with every
#                     hub download forbidden (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1)
#
# Environment:
#   PYTHON            interpreter that creates the venv (default: python3.11, else python3)
#   TORCH_INDEX_URL   install torch first from this index alone, at the exact version pyproject.toml
#                     pins (the image uses PyTorch's CPU wheel index); unset: torch comes from the
#                     configured registry with everything else
#   PIP_*             pip's own settings (index, cache, offline) pass through untouched
set -euo pipefail

venv=.venv
editable=0
extras=""
check_offline=0
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) venv="${2:?--venv needs a directory}"; shift 2 ;;
        --editable) editable=1; shift ;;
        --extras) extras="${2:?--extras needs a list, e.g. dev}"; shift 2 ;;
        --check-offline) check_offline=1; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (valid: --venv DIR, --editable, --extras LIST, --check-offline)" >&2; exit 2 ;;
    esac
done

# The project root is the parent of this script's folder, wherever it is called from.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
venv="$(cd "$venv" && pwd)"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --upgrade pip

if [ -n "${TORCH_INDEX_URL:-}" ]; then
    # The pin is read from pyproject.toml, so the two can never disagree.
    torch_pin="$(grep -oE '"torch==[^"]+"' "$root/pyproject.toml" | tr -d '"')"
    if [ -z "$torch_pin" ]; then
        echo "install.sh: no exact torch==VERSION pin found in $root/pyproject.toml" >&2
        exit 1
    fi
    "${pip[@]}" install --index-url "$TORCH_INDEX_URL" "$torch_pin"
fi

target="$root"
if [ -n "$extras" ]; then target="${root}[${extras}]"; fi
if [ "$editable" -eq 1 ]; then
    "${pip[@]}" install -e "$target"
else
    "${pip[@]}" install "$target"
fi

if [ "$check_offline" -eq 1 ]; then
    # Run from / so that the installed package is imported, not a source tree in the working directory.
    (cd / && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$venv/bin/python" -c '
from experts import Encoder
encoder = Encoder(None)
vector = encoder.embed(["the bundled encoder loads with no network"])
assert vector.shape == (1, encoder.dim), vector.shape
print(f"install.sh: bundled base encoder loaded offline ({encoder.model_id}, dim {encoder.dim})")
')
fi

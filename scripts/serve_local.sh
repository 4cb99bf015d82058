#!/usr/bin/env bash
# Serve the worker's local API against the ComfyUI that scripts/install_stack.py installed (a CPU is enough for
# test mode, diagnose and the self-test):
#   scripts/serve_local.sh
#   curl -s localhost:8000/runsync -H 'Content-Type: application/json' -d '{"input": {"test": true}}'
# It is entrypoint.sh with three defaults for a workstation: ALLOW_CPU=1 (use the GPU if there is one, else the CPU),
# MODELS=none (no 40 GB download) and SERVE_API_LOCALLY=true (http://127.0.0.1:8000). Each, and every other entrypoint
# variable (docs/DEPLOYMENT.md), can still be set.
set -euo pipefail
export ALLOW_CPU="${ALLOW_CPU:-1}" MODELS="${MODELS:-none}" SERVE_API_LOCALLY="${SERVE_API_LOCALLY:-true}"
exec "$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)/entrypoint.sh" "$@"

#!/usr/bin/env bash
# Create (or update) the work pools `cpu` and `gpu` that prefect.yaml deploys to, with the
# per-GPU guard (pool concurrency limit = GPUs, global concurrency limit `gpu`); see
# ops/create_pools.py. Idempotent.
#
#   PREFECT_API_URL=http://127.0.0.1:4200/api bash ops/create-pools.sh [--gpus N]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then :
elif [ -x "$here/.venv/bin/python" ]; then PYTHON="$here/.venv/bin/python"
else PYTHON=python3; fi
exec "$PYTHON" "$here/ops/create_pools.py" "$@"

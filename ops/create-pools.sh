#!/usr/bin/env bash
# Create (or update) the work pools that prefect.yaml deploys to, with the GPU guard.
#
#   PREFECT_API_URL=http://127.0.0.1:4200/api bash ops/create-pools.sh
#
#   cpu  process pool: orchestration, world, mining, filtering, promotion; no limit.
#   gpu  process pool: experts shards, foundation, apprentice training, sweeps, eval.
#        Guard (Prefect's advice for GPUs): the pool's concurrency limit is the number of
#        GPUs (SUTI_GPUS, default: what nvidia-smi lists, at least 1), each GPU gets one
#        worker started with `--limit 1` and its own CUDA_VISIBLE_DEVICES
#        (ops/start-gpu-workers.sh), and a global concurrency limit `gpu` with one slot per
#        GPU lets code outside the pool hold a GPU too
#        (`with prefect.concurrency.sync.concurrency("gpu"): ...`).
#
# Idempotent: rerunning updates the pools and the limit.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PREFECT:-}" ]; then :
elif [ -x "$here/.venv/bin/prefect" ]; then PREFECT="$here/.venv/bin/prefect"
else PREFECT=prefect; fi
if [ -z "${PREFECT_API_URL:-}" ]; then
  echo "create-pools: set PREFECT_API_URL to your Prefect server's API (e.g. http://127.0.0.1:4200/api)" >&2
  exit 2
fi
gpus="${SUTI_GPUS:-}"
if [ -z "$gpus" ]; then
  gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
  [ "$gpus" -ge 1 ] 2>/dev/null || gpus=1
fi

p() { "$PREFECT" --no-prompt "$@"; }

p work-pool create cpu --type process --overwrite >/dev/null
p work-pool create gpu --type process --overwrite >/dev/null
p work-pool set-concurrency-limit gpu "$gpus" >/dev/null
if p global-concurrency-limit inspect gpu >/dev/null 2>&1; then
  p global-concurrency-limit update gpu --limit "$gpus" >/dev/null
else
  p global-concurrency-limit create gpu --limit "$gpus" >/dev/null
fi
echo "work pools: cpu (process), gpu (process, concurrency limit $gpus); global concurrency limit gpu=$gpus"

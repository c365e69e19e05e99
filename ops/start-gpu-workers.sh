#!/usr/bin/env bash
# Start one Prefect worker per GPU on this node, each pinned to its GPU and taking one
# flow run at a time: with the gpu pool's concurrency limit (ops/create-pools.sh) this is
# the per-GPU guard. Run from the project folder; PIDs go to work/workers/gpu-<i>.pid,
# logs to work/workers/gpu-<i>.log. Stop them with: kill $(cat work/workers/gpu-*.pid)
#
#   PREFECT_API_URL=http://HOST:4200/api bash ops/start-gpu-workers.sh [NUM_GPUS]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PREFECT:-}" ]; then :
elif [ -x "$here/.venv/bin/prefect" ]; then PREFECT="$here/.venv/bin/prefect"
else PREFECT=prefect; fi
: "${PREFECT_API_URL:?set PREFECT_API_URL to your Prefect server API}"
n="${1:-${SUTI_GPUS:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)}}"
[ "$n" -ge 1 ] 2>/dev/null || { echo "start-gpu-workers: no GPUs found (give the number as an argument)" >&2; exit 2; }
mkdir -p "$here/work/workers"
cd "$here"
for ((i = 0; i < n; i++)); do
  CUDA_VISIBLE_DEVICES=$i nohup "$PREFECT" worker start --pool gpu --name "gpu-$(hostname)-$i" --limit 1 \
    >"work/workers/gpu-$i.log" 2>&1 &
  echo $! >"work/workers/gpu-$i.pid"
  echo "worker gpu-$i: pid $(cat "work/workers/gpu-$i.pid"), CUDA_VISIBLE_DEVICES=$i"
done

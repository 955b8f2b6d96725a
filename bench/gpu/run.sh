#!/usr/bin/env bash
# The GPU check pack (issue 17): on a machine with an NVIDIA GPU and no network, install the wheels that
# bench/gpu/prepare.sh put in .whl/ into a private target (the image's torch stays in use), then run every
# check of bench/gpu/checks.py, each with its own time limit, printing each result as it lands; all in under
# 8 minutes. Writes OUTDIR/results.json (per check: name, status, reason, seconds, figures), OUTDIR/run.log
# and OUTDIR/install.json. Exit 0 when no check failed.
#
#   bash bench/gpu/run.sh OUTDIR                  # on the GPU machine
#   bash bench/gpu/run.sh --cpu-dry-run OUTDIR    # the whole flow on CPU with tiny models (tests/test_gpu_pack.py)
#
# Env: PYTHON (the interpreter holding torch, default python3), WHEELS (default .whl), WORK (scratch, default
# /tmp/dpdeck-gpupack, emptied first), TOTAL_S (the whole run's limit, default 470 on a GPU, 2700 dry),
# ONLY (comma-separated check names).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
dry=""
if [ "${1:-}" = "--cpu-dry-run" ]; then dry=--cpu-dry-run; shift; fi
if [ $# -ne 1 ]; then echo "usage: run.sh [--cpu-dry-run] OUTDIR" >&2; exit 2; fi
mkdir -p "$1" || exit 2
out=$(cd "$1" && pwd)
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/dpdeck-gpupack}
WHEELS=${WHEELS:-$repo/.whl}
if [ -n "$dry" ]; then total=${TOTAL_S:-2700}; else total=${TOTAL_S:-470}; fi
start=$(date +%s)
rm -rf "$WORK" && mkdir -p "$WORK" || exit 2
exec > >(tee -a "$out/run.log") 2>&1

echo "== dpdeck GPU check pack $(date -u +%FT%TZ) $dry"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())' \
  || echo "torch does not import with $PY: the checks that train will fail and say so"

if [ -n "$dry" ]; then
  echo '{"status": "skipped", "reason": "CPU dry run: this environment'"'"'s own packages are used", "installed": [], "failed": {}}' > "$out/install.json"
else
  timeout 120 "$PY" "$here/checks.py" install --wheels "$WHEELS" --target "$WORK/site" --out "$out" \
    || echo "the install step itself failed; the wheels check reports what is missing"
fi
# The carried wheels first, then the repository (dpdeck itself, never installed), then the image's packages.
export PYTHONPATH="$WORK/site:$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled

left=$(( total - ($(date +%s) - start) - 15 ))
only=()
if [ -n "${ONLY:-}" ]; then only=(--only "$ONLY"); fi
timeout $(( left + 10 )) "$PY" "$here/checks.py" run --out "$out" --work "$WORK" --budget "$left" $dry "${only[@]}"
rc=$?
echo "== done in $(( $(date +%s) - start )) s (exit $rc): $out/results.json"
exit $rc

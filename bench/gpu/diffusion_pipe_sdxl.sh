#!/usr/bin/env bash
# GPU check for the diffusion-pipe backend (issue 14, item 6): on a machine with an NVIDIA GPU and no
# network, install the managed checkout from a carried copy, then run upstream's train.py through dpdeck's
# queue on a tiny SDXL: one job to completion, a second stopped with save_quit and resumed. Prints figures
# (install time, steps/s, wall, exit reasons). docs/backend.md ("GPU check") says what to carry and how.
#
#   DP_SRC=.carry/diffusion-pipe WHEELS=.whl bash bench/gpu/diffusion_pipe_sdxl.sh
#
# Env: DP_SRC (a diffusion-pipe checkout with its submodules, default .carry/diffusion-pipe), WHEELS (wheels
# for dpdeck's and upstream's requirements, default .whl), PYTHON (the interpreter holding the CUDA torch,
# default python3), WORK (scratch, default /tmp/dp-sdxl-check), OUT (figures and logs, default $WORK/out),
# JOB_TIMEOUT (seconds per job, default 480).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
DP_SRC=$(cd "${DP_SRC:-$repo/.carry/diffusion-pipe}" 2>/dev/null && pwd) || DP_SRC=${DP_SRC:-$repo/.carry/diffusion-pipe}
WHEELS=${WHEELS:-$repo/.whl}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/dp-sdxl-check}
OUT=${OUT:-$WORK/out}
JOB_TIMEOUT=${JOB_TIMEOUT:-480}

say() { printf '\n== %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
dpdeck() { "$PY" -m tui.cli "$@"; }
field() { "$PY" "$here/dp_sdxl_job.py" field "$1" "$2"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this check needs an NVIDIA GPU"
[ -f "$DP_SRC/train.py" ] || die "no diffusion-pipe checkout at $DP_SRC (set DP_SRC; see docs/backend.md)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
export DPDECK_HOME=$WORK/home PYTHONUNBUFFERED=1 WANDB_MODE=disabled
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
if [ -d "$WHEELS" ]; then export PIP_FIND_LINKS=$WHEELS; fi

say "0. dpdeck into $PY (dependencies from $WHEELS)"
"$PY" -m pip install -q --no-build-isolation -e "$repo" || die "pip could not install dpdeck offline: carry its wheels"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch cannot see the GPU'; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

say "1. a local mirror of the carried copy and its submodules (git clone needs a repository to clone)"
mirror=$WORK/mirror
mkdir -p "$mirror"
commit=$(git -C "$DP_SRC" rev-parse HEAD)
git -C "$DP_SRC" branch -f dpdeck-carried HEAD >/dev/null
git clone -q --bare --no-local "$DP_SRC" "$mirror/diffusion-pipe.git"
n=0
# Each submodule url is redirected to a bare copy of the carried submodule (GIT_CONFIG_* reach every git
# that dpdeck runs); the carried HEAD gets a branch so the recorded commit is in the copy.
if [ -f "$DP_SRC/.gitmodules" ]; then
  while read -r key path; do
    name=${key#submodule.}
    name=${name%.path}
    url=$(git -C "$DP_SRC" config -f .gitmodules "submodule.$name.url")
    [ -e "$DP_SRC/$path/.git" ] || die "submodule $path is not checked out in $DP_SRC (git submodule update --init --recursive there)"
    git -C "$DP_SRC/$path" branch -f dpdeck-carried HEAD >/dev/null
    git clone -q --bare --no-local "$DP_SRC/$path" "$mirror/$name.git"
    export "GIT_CONFIG_KEY_$n=url.$mirror/$name.git.insteadOf" "GIT_CONFIG_VALUE_$n=$url"
    n=$((n + 1))
  done < <(git -C "$DP_SRC" config -f .gitmodules --get-regexp '^submodule\..*\.path$')
fi
export "GIT_CONFIG_KEY_$n=protocol.file.allow" "GIT_CONFIG_VALUE_$n=always"
export GIT_CONFIG_COUNT=$((n + 1))
echo "carried commit $commit, $n submodule(s)"

say "2. dpdeck backend install diffusion-pipe (from the mirror, pinned at the carried commit)"
t0=$(now)
dpdeck backend install diffusion-pipe --url "$mirror/diffusion-pipe.git" --ref "$commit" --python "$PY" \
  2>&1 | tee "$OUT/install.log" || die "backend install failed (its step, command and fix are above)"
install_s=$(since "$t0")
t0=$(now)
dpdeck backend install diffusion-pipe --url "$mirror/diffusion-pipe.git" --ref "$commit" --python "$PY" >/dev/null
rerun_s=$(since "$t0")
dpdeck backend status | tee "$OUT/status.txt"

say "3. a tiny SDXL checkpoint, its configs in an offline HF cache, a dataset and two profiles"
"$PY" "$here/dp_sdxl_job.py" build "$WORK/sdxl" --epochs 2 | tee "$OUT/build.json"
export HF_HOME=$WORK/sdxl/hf
"$PY" "$here/dp_sdxl_job.py" check-load "$WORK/sdxl" >/dev/null
main=$WORK/sdxl/profile/main.toml
long=$WORK/sdxl/profile/long.toml
sed -e 's/^epochs = .*/epochs = 8/' "$main" > "$long"
dpdeck profile validate "$main" --backend diffusion-pipe
dpdeck daemon start

say "4. job 1: to completion"
job1=$(dpdeck queue add "$main" --backend diffusion-pipe --name sdxl-tiny)
dpdeck wait "$job1" --timeout "$JOB_TIMEOUT" || { dpdeck logs "$job1" | tail -60; die "job $job1 did not complete"; }

say "5. job 2: stopped with save_quit once it trains, then resumed"
job2=$(dpdeck queue add "$long" --backend diffusion-pipe --name sdxl-tiny-stop)
deadline=$(( $(date +%s) + JOB_TIMEOUT ))
until [ "$(field "$job2" step)" != "None" ] && [ "$(field "$job2" step)" -ge 3 ]; do
  state=$(field "$job2" state)
  case $state in completed|failed|cancelled|oom|hung|interrupted) dpdeck logs "$job2" | tail -60; die "job $job2 ended ($state) before it could be stopped";; esac
  [ "$(date +%s)" -lt "$deadline" ] || die "job $job2 never reached step 3"
  sleep 2
done
dpdeck stop "$job2"
dpdeck wait "$job2" --timeout "$JOB_TIMEOUT" || true
reason=$(field "$job2" exit_reason)
state2=$(field "$job2" state)
echo "job $job2 after stop: state=$state2 exit_reason=$reason"
case "$state2 $reason" in *crash*|failed*|oom*|hung*) die "a save_quit exit was classified as $state2 ($reason)";; esac
dpdeck logs "$job2" | grep -m1 "Manually quitting" || die "job $job2's log lacks upstream's save_quit line"
job3=$(dpdeck resume "$job2" --json | "$PY" -c "import json,sys; print(json.load(sys.stdin)['new_job'])")
dpdeck wait "$job3" --timeout "$JOB_TIMEOUT" || { dpdeck logs "$job3" | tail -60; die "resumed job $job3 did not complete"; }
dpdeck logs "$job3" | grep -m1 "Resuming training from checkpoint" || die "job $job3 did not resume from a checkpoint"

say "figures"
for j in "$job1" "$job2" "$job3"; do dpdeck logs "$j" > "$OUT/job$j.log" 2>&1 || true; done
{
  echo "install: ${install_s}s (re-run, all steps skipped: ${rerun_s}s)"
  "$PY" "$here/dp_sdxl_job.py" figures "$job1" "$job2" "$job3"
} | tee "$OUT/figures.txt"
echo "OK"

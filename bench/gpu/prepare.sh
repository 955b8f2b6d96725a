#!/usr/bin/env bash
# Run on a machine with package-registry access, before bench/gpu/run.sh travels to a GPU machine without one:
# downloads into .whl/ (git-ignored) the Python 3.12 x86-64 wheels that machine's image lacks
# (bench/gpu/wheels.txt), builds deepspeed's with `pip wheel --no-deps`, checks that every requirement is
# carried or in the image, prints the sizes and fails when tree + wheels exceed the 64 MiB that may travel.
#
#   bash bench/gpu/prepare.sh            # fetch what is missing into .whl/, verify, size
#   bash bench/gpu/prepare.sh --check    # resolve the pins for the GPU machine; download nothing
#   bash bench/gpu/prepare.sh --verify   # only the offline checks of what .whl/ holds
#
# Env: PYTHON (default python3), WHEELS (default .whl in the repository root).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
action=prepare
case "${1:-}" in
  "") ;;
  --check) action=check ;;
  --verify) action=verify ;;
  *) echo "usage: prepare.sh [--check | --verify]" >&2; exit 2 ;;
esac
exec "${PYTHON:-python3}" "$here/pack.py" "$action" --dest "${WHEELS:-$repo/.whl}"

"""A diffusion-pipe stand-in for the GPU pack's OOM check: dpdeck launches it as it launches upstream's
train.py (`dpdeck config set diffusion_pipe.path bench/gpu/oom_backend`), with --deepspeed --config X.toml.

`[gpupack] oom = "cuda"` allocates GPU memory 1 GiB at a time until the CUDA allocator refuses, and lets
the real torch.OutOfMemoryError end the rank, as a training step that does not fit would. `oom = "synthetic"`
(the CPU dry run) prints the line such an error ends with and exits 1: the same classification path, no GPU.
"""

from __future__ import annotations

import argparse
import sys

try:
    import tomllib  # novermin (guarded: tomli below on 3.10)
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SYNTHETIC = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB (synthetic: CPU dry run)"
CHUNK = 2**30


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--local_rank", type=int, default=0)
    ap.add_argument("--deepspeed", action="store_true")
    ap.add_argument("--master_port", type=int)
    ap.add_argument("--resume_from_checkpoint", nargs="?", const=True)
    args = ap.parse_args()
    with open(args.config, "rb") as fh:
        mode = tomllib.load(fh).get("gpupack", {}).get("oom", "synthetic")
    if mode == "synthetic":
        print(SYNTHETIC, file=sys.stderr, flush=True)
        return 1
    import torch

    held = []
    total = torch.cuda.get_device_properties(0).total_memory
    print(f"allocating 1 GiB blocks on {torch.cuda.get_device_name(0)} ({total / 2**30:.0f} GiB)", flush=True)
    for _ in range(2 * total // CHUNK + 2):  # the allocator refuses long before this ends
        held.append(torch.empty(CHUNK, dtype=torch.uint8, device="cuda"))
    print(f"held {len(held)} GiB without an OOM", flush=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""Models benchmarks: download throughput vs curl, and discover+classify of 200 safetensors files.

Usage: python bench/bench_models.py [--size-mb 1024] [--rounds 2] [--files 200]

1. A sparse file of --size-mb is served by tests/hub_server.py (resolve/ answers 302 to its CDN, which sends
   the bytes with sendfile; 127.0.0.1). The same URL is fetched by `curl -L -o FILE` and by a dpdeck download, timed from `pull_file` (planning HEAD via huggingface_hub,
   state recorded, daemon poked) until the state file says completed: the daemon forks a worker, which
   streams the GET, hashes sha256 while streaming, fsyncs and renames. The daemon is started once before the
   rounds (its start-up is printed separately). Rounds alternate; best and median of each are printed, and
   the ratio dpdeck/curl (target >= 0.9). Every downloaded copy is deleted right after it is timed.
2. --files safetensors files with realistic headers (SDXL checkpoints, Flux transformers, LoRAs, VAEs, T5)
   are written sparse, then `engine.models.discovery.scan` classifies them (target <= 1 s).
Runs in a throwaway DPDECK_HOME; needs about 2x --size-mb of free disk at peak.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def bench_download(work: Path, size_mb: int, rounds: int) -> None:
    from hub_server import HubFile, HubServer

    from engine.models import downloads

    src = work / "src.bin"
    with open(src, "wb") as fh:
        fh.truncate(size_mb * 1024 * 1024)
    size = src.stat().st_size
    need = size * 2 + (256 << 20)
    if shutil.disk_usage(work).free < need:
        print(f"download: skipped, needs {need >> 20} MB free in {work}")
        return
    curl = shutil.which("curl")
    if curl is None:
        print("download: skipped, curl is not installed")
        return
    print(f"download: {size / 1e9:.2f} GB file (sparse source); load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    digest = sha256_of(src)
    rows: list[tuple[float, float, float, float]] = []  # curl s, dpdeck end-to-end s, startup s, transfer s
    from engine.jobs import client

    t = time.perf_counter()
    client.ensure_daemon()  # a long-lived service on a real box (the TUI or any command started it)
    print(f"  daemon start-up (once, not in the rounds): {time.perf_counter() - t:.2f} s")
    with HubServer() as hub:
        hub.add("bench/big", {"big.safetensors": HubFile(path=src, sha256=digest)})
        os.environ["HF_ENDPOINT"] = hub.url
        url = f"{hub.url}/bench/big/resolve/main/big.safetensors"
        for r in range(rounds):
            out = work / "curl.out"
            t = time.perf_counter()
            subprocess.run([curl, "-sSfL", "-o", str(out), url], check=True)
            t_curl = time.perf_counter() - t
            assert out.stat().st_size == size
            out.unlink()
            t = time.perf_counter()
            dl = downloads.pull_file("bench/big", "big.safetensors")
            final = downloads.wait(dl.id, timeout=600, poll=0.02)
            t_dp = time.perf_counter() - t
            if final.state != "completed":
                raise SystemExit(f"dpdeck download failed: {final.error}")
            Path(final.dest).unlink()
            downloads.state_path(dl.id).unlink()
            rows.append((t_curl, t_dp, final.timings["startup_s"], final.timings["transfer_s"]))
            detail = ", ".join(f"{k} {final.timings.get(k, 0):.2f}" for k in ("write_s", "hash_wait_s", "fsync_s"))
            print(f"  round {r + 1}: curl {t_curl:.2f} s ({size / t_curl / 1e6:.0f} MB/s) | dpdeck {t_dp:.2f} s "
                  f"({size / t_dp / 1e6:.0f} MB/s; worker start {rows[-1][2]:.2f} s, transfer+sha256+fsync "
                  f"{rows[-1][3]:.2f} s: {detail}) | ratio {t_curl / t_dp:.2f}x")
    client.stop_daemon()
    src.unlink()
    e2e = [c / d for c, d, _s, _t in rows]
    xfer = [c / t for c, _d, _s, t in rows]
    print(f"  dpdeck/curl throughput, end to end:   median {statistics.median(e2e):.2f}x, best {max(e2e):.2f}x")
    print(f"  dpdeck/curl throughput, transfer only: median {statistics.median(xfer):.2f}x, best {max(xfer):.2f}x")
    print("  target >= 0.90x. dpdeck = plan (HEAD) + queue + daemon forks a worker + GET + sha256 + fsync + rename;"
          " curl neither hashes nor fsyncs. Round 1 includes the daemon's one-time import of the worker modules.")
    print(f"  load average now {os.getloadavg()[0]:.1f}")


def _specs() -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    sdxl: dict[str, tuple[str, tuple[int, ...]]] = {}
    for i in range(2400):
        sdxl[f"model.diffusion_model.input_blocks.{i % 12}.{i}.weight"] = ("F16", (320, 320))
    sdxl["model.diffusion_model.input_blocks.0.0.weight"] = ("F16", (320, 4, 3, 3))
    sdxl["model.diffusion_model.label_emb.0.0.weight"] = ("F16", (1280, 2816))
    for i in range(100):
        sdxl[f"first_stage_model.decoder.block.{i}.weight"] = ("F16", (512, 512))
    flux = {f"double_blocks.{i // 40}.img_attn.part{i}.weight": ("BF16", (3072, 3072)) for i in range(760)}
    flux |= {
        "img_in.weight": ("BF16", (3072, 64)),
        "double_blocks.0.img_attn.qkv.weight": ("BF16", (9216, 3072)),
        "guidance_in.in_layer.weight": ("BF16", (3072, 256)),
    }
    lora = {}
    for i in range(350):
        lora[f"lora_unet_block_{i}.lora_down.weight"] = ("F16", (32, 1280))
        lora[f"lora_unet_block_{i}.lora_up.weight"] = ("F16", (1280, 32))
        lora[f"lora_unet_block_{i}.alpha"] = ("F16", ())
    vae = {f"encoder.down.{i}.weight": ("F32", (512, 512, 3, 3)) for i in range(240)}
    vae["decoder.conv_in.weight"] = ("F32", (512, 16, 3, 3))
    t5 = {
        f"encoder.block.{i // 9}.layer.{i % 9}.SelfAttention.q.weight": ("F16", (4096, 4096))
        for i in range(220)
    }
    t5["encoder.block.0.layer.0.SelfAttention.q.weight"] = ("F16", (4096, 4096))
    t5["shared.weight"] = ("F16", (32128, 4096))
    return {"sdxl": sdxl, "flux": flux, "lora": lora, "vae": vae, "t5": t5}


def bench_discovery(work: Path, n: int) -> None:
    from engine.models.discovery import scan
    from engine.models.safetensors_header import write_header_only

    folder = work / "scan"
    specs = _specs()
    kinds = list(specs)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        sub = folder / kind
        sub.mkdir(parents=True, exist_ok=True)
        write_header_only(sub / f"{kind}_{i:03d}.safetensors", specs[kind])
    header_mb = sum(p.stat().st_blocks * 512 for p in folder.rglob("*.safetensors")) / 1e6
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        items = scan([folder])
        runs.append(time.perf_counter() - t)
    bad = [i for i in items if i.error]
    families: dict[str, int] = {}
    for i in items:
        families[f"{i.family or '-'}/{i.kind}"] = families.get(f"{i.family or '-'}/{i.kind}", 0) + 1
    print(f"discovery: {len(items)} files ({header_mb:.1f} MB of headers on disk), errors {len(bad)}")
    print(f"  classified as {families}")
    print(
        f"  scan+classify: best {min(runs) * 1000:.0f} ms, median {statistics.median(runs) * 1000:.0f} ms "
        f"(target <= 1000 ms)"
    )
    shutil.rmtree(folder)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--skip-download", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpdeck-bench-models-") as tmp:
        work = Path(tmp)
        os.environ["DPDECK_HOME"] = str(work / "home")
        os.environ["DPDECK_MODELS_DIR"] = str(work / "models")
        os.environ["HF_HOME"] = str(work / "hf_home")
        os.environ["DPDECK_MIN_FREE_BYTES"] = "0"
        bench_discovery(work, args.files)
        if not args.skip_download:
            bench_download(work, args.size_mb, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

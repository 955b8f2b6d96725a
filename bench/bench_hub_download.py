"""One big file from the emulated Hub (resolve/ -> 302 -> signed CDN URL): dpdeck vs hf_hub_download vs curl.

Usage: python bench/bench_hub_download.py [--size-mb 1024] [--rounds 3] [--xet-mb 0]

tests/hub_server.py serves a sparse --size-mb file: the Hub answers the resolve URL with a 302 to its CDN (another
port of 127.0.0.1, sendfile) and a signed URL, as huggingface.co does for LFS files. In every round, in a
rotating order so none always goes first:
- curl: `curl -sSfL -o FILE <resolve URL>` (follows the redirect; no hashing, no fsync);
- huggingface_hub.hf_hub_download(local_dir=...) in this process (HEAD, GET from the CDN, move into place);
- dpdeck: `pull_file` (planning HEAD, state recorded, daemon poked) until the state file says completed: the
  daemon forks a worker, which GETs the signed URL, hashes sha256 while streaming, fsyncs and renames.
The daemon is started once before the rounds. Printed: each round's times, then the median and best of the
throughput ratios dpdeck/hf_hub_download (target >= 1.0) and dpdeck/curl (target >= 0.9).

--xet-mb N (optional, needs hf_xet): also a random N MB xet-backed file, served by hf_xet's local CAS
(`local://`, no network), dpdeck vs hf_hub_download, both through hf_xet.
Runs in a throwaway DPDECK_HOME; needs about 2x --size-mb of free disk at peak.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


TIMING_KEYS = ("startup_s", "transfer_s", "write_s", "hash_wait_s", "fsync_s")
LAST: dict[str, str] = {}  # the last dpdeck round's worker timings, for the round's line


def _dpdeck(repo: str, name: str) -> Callable[[Path], float]:
    def run(_out: Path) -> float:
        from engine.models import downloads

        t = time.perf_counter()
        dl = downloads.pull_file(repo, name)
        final = downloads.wait(dl.id, timeout=900, poll=0.02)
        took = time.perf_counter() - t
        if final.state != "completed":
            raise SystemExit(f"dpdeck download failed: {final.error}")
        Path(final.dest).unlink()
        downloads.state_path(dl.id).unlink()
        LAST["dpdeck"] = ", ".join(f"{k} {final.timings.get(k, 0):.2f}" for k in TIMING_KEYS)
        LAST["dpdeck"] += f"; via {final.files[0].via}"
        return took
    return run


def _hf(repo: str, name: str, endpoint: str) -> Callable[[Path], float]:
    def run(out: Path) -> float:
        from huggingface_hub import hf_hub_download

        t = time.perf_counter()
        path = hf_hub_download(repo, name, local_dir=out, endpoint=endpoint)
        took = time.perf_counter() - t
        shutil.rmtree(out)
        assert not Path(path).exists()
        return took
    return run


def _curl(url: str, size: int) -> Callable[[Path], float]:
    curl = shutil.which("curl")
    assert curl is not None

    def run(out: Path) -> float:
        target = out / "curl.out"
        out.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        subprocess.run([curl, "-sSfL", "-o", str(target), url], check=True)
        took = time.perf_counter() - t
        got = target.stat().st_size
        shutil.rmtree(out)
        if got != size:
            raise SystemExit(f"curl got {got} bytes, expected {size}")
        return took
    return run


def _rounds(work: Path, size: int, rounds: int, tools: dict[str, Callable[[Path], float]]) -> dict[str, list[float]]:
    names = list(tools)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        line = []
        for name in order:
            took = tools[name](work / f"out-{name}")
            times[name].append(took)
            line.append(f"{name} {took:.2f} s ({size / took / 1e6:.0f} MB/s)")
        print(f"  round {r + 1}: " + " | ".join(line), flush=True)
        print(f"           dpdeck worker: {LAST.get('dpdeck', '')}", flush=True)
    return times


def _ratios(times: dict[str, list[float]], base: str, target: float) -> str:
    per_round = [b / d for b, d in zip(times[base], times["dpdeck"], strict=True)]
    return (f"dpdeck/{base}: median {statistics.median(per_round):.2f}x, best {max(per_round):.2f}x, "
            f"worst {min(per_round):.2f}x (target >= {target:.1f}x)")


def bench_http(work: Path, size_mb: int, rounds: int) -> None:
    from hub_server import HubFile, HubServer

    from engine.jobs import client

    src = work / "src.bin"
    with open(src, "wb") as fh:
        fh.truncate(size_mb * 1024 * 1024)
    size = src.stat().st_size
    need = size * 2 + (256 << 20)
    if shutil.disk_usage(work).free < need:
        raise SystemExit(f"needs {need >> 20} MB free in {work}")
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed")
    print(f"HTTP (302 to the CDN, signed URL): {size / 1e9:.2f} GB sparse file; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    t = time.perf_counter()
    client.ensure_daemon()
    print(f"  daemon start-up (once, not in the rounds): {time.perf_counter() - t:.2f} s")
    with HubServer() as hub:
        hub.add("bench/big", {"big.safetensors": HubFile(path=src)})
        hub.repos["bench/big"].files["big.safetensors"].digest()  # hashed once here, not in the rounds
        os.environ["HF_ENDPOINT"] = hub.url
        url = f"{hub.url}/bench/big/resolve/main/big.safetensors"
        tools = {"curl": _curl(url, size), "hf_hub_download": _hf("bench/big", "big.safetensors", hub.url),
                 "dpdeck": _dpdeck("bench/big", "big.safetensors")}
        times = _rounds(work, size, rounds, tools)
        assert all(r["auth"] is None for r in hub.requests if r["host"] == "cdn")
    src.unlink()
    print("  " + _ratios(times, "hf_hub_download", 1.0))
    print("  " + _ratios(times, "curl", 0.9))
    print("  dpdeck = plan (HEAD) + queue + daemon forks a worker + GET + sha256 + fsync + rename; hf_hub_download"
          " and curl neither hash nor fsync.")
    print(f"  load average now {os.getloadavg()[0]:.1f}", flush=True)


def bench_xet(work: Path, size_mb: int, rounds: int) -> None:
    from hub_server import HubFile, HubServer

    from engine.models.xet import unavailable_reason

    why = unavailable_reason()
    if why is not None:
        print(f"xet: skipped ({why})")
        return
    src = work / "xsrc.bin"
    with open(src, "wb") as fh:
        for _ in range(size_mb):
            fh.write(os.urandom(1 << 20))  # random: zeros would deduplicate to almost nothing in xet
    size = src.stat().st_size
    print(f"xet (hf_xet, local CAS): {size / 1e6:.0f} MB random file", flush=True)
    with HubServer() as hub:
        t = time.perf_counter()
        hub.add("bench/xet", {"x.safetensors": HubFile(path=src, xet=True)})
        print(f"  stored in the local CAS in {time.perf_counter() - t:.1f} s")
        os.environ["HF_ENDPOINT"] = hub.url
        tools = {"hf_hub_download": _hf("bench/xet", "x.safetensors", hub.url), "dpdeck": _dpdeck("bench/xet", "x.safetensors")}
        times = _rounds(work, size, rounds, tools)
        assert not [r for r in hub.requests if r["host"] == "cdn"], "a download went over the HTTP bridge"
    src.unlink()
    print("  " + _ratios(times, "hf_hub_download", 1.0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--xet-mb", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpdeck-bench-hub-") as tmp:
        work = Path(tmp)
        os.environ["DPDECK_HOME"] = str(work / "home")
        os.environ["DPDECK_MODELS_DIR"] = str(work / "models")
        os.environ["HF_HOME"] = str(work / "hf_home")
        os.environ["HF_XET_CACHE"] = str(work / "xet_cache")
        os.environ["DPDECK_MIN_FREE_BYTES"] = "0"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        try:
            bench_http(work, args.size_mb, args.rounds)
            if args.xet_mb:
                bench_xet(work, args.xet_mb, args.rounds)
        finally:
            from engine.jobs import client

            client.stop_daemon()
    return 0


if __name__ == "__main__":
    sys.exit(main())

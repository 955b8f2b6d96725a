"""Dataset engine benchmarks (prints figures; not a test).

Generates N tiny images (PNG/JPEG/WebP, 8 sizes and aspects) with a caption each in a temp dir, then times:
1. scan (header-only sizes, captions, tags), warm page cache: target <= 3 s for 100,000 images;
2. bucket preview (`dataset buckets`: the trainer's own plan_buckets) on the same set: target <= 3 s;
3. trigger-word batch op on every caption (plan + journal for undo + atomic replace of each file): target <= 10 s.
Each figure is printed with a reference measured in the same run: the bare cost of opening and reading every file
the step must read (os.scandir + os.open/os.read), so a slow disk or a loaded machine shows up in both.

The trigger op is also compared with the disk's floor: creating as many new small files plus one sync, measured
right after it. Run the bench on a filesystem that has not deleted ~100,000 files in the last few minutes (e.g.
right after an earlier run): ext4 skips inodes freed in the last minutes when it allocates new ones (the kernel's
`recently_deleted` check, seen with perf), which made every file creation, and so the op and the floor alike, up
to 10x slower in our runs.

Usage: python bench/bench_datasets.py [--n 100000] [--keep]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZES = [(64, 64), (96, 64), (64, 96), (128, 64), (64, 128), (80, 60), (60, 80), (100, 100)]
FORMATS = [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp")]


def _templates() -> list[tuple[str, bytes]]:
    from PIL import Image

    out = []
    for i, (w, h) in enumerate(SIZES):
        fmt, ext = FORMATS[i % len(FORMATS)]
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (i * 30, 80, 160)).save(buf, format=fmt)
        out.append((ext, buf.getvalue()))
    return out


def generate(root: Path, n: int) -> Path:
    d = root / "images"
    d.mkdir()
    templates = _templates()
    for i in range(n):
        ext, data = templates[i % len(templates)]
        with open(d / f"{i:06d}{ext}", "wb") as fh:
            fh.write(data)
        with open(d / f"{i:06d}.txt", "wb") as fh:
            fh.write(f"tag{i % 97}, scenery, tag{i % 13}, detailed".encode())
    return d


def read_everything(d: Path) -> float:
    """Reference: list the folder and open + read every file once (the floor for any scan of it)."""
    t = time.perf_counter()
    with os.scandir(d) as it:
        names = [e.name for e in it]
    for name in names:
        fd = os.open(d / name, os.O_RDONLY)
        os.read(fd, 512)
        os.close(fd)
    return time.perf_counter() - t


def create_floor(root: Path, n: int) -> float:
    """Reference for the batch op: the bare cost of making n new small files durable on this disk (no rename, no
    journal, no Python caption work), one thread. The files are left in place (removed with the rest at the end):
    deleting 100,000 files would slow the creates that follow (see the module notes)."""
    d = root / "floor"
    d.mkdir()
    data = b"ohwx, tag1, scenery, tag1, detailed"
    t = time.perf_counter()
    for i in range(n):
        fd = os.open(d / f"{i:06d}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    os.sync()
    return time.perf_counter() - t


def timed(fn, repeat: int = 2) -> float:  # noqa: ANN001 - any zero-arg callable
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def line(name: str, secs: float, target: float, ref: float) -> None:
    verdict = "OK" if secs <= target else "OVER TARGET"
    print(
        f"{name:<36} {secs:7.2f} s   target <= {target:.1f} s  [{verdict}]   {secs / ref:5.1f}x the bare read"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="images to generate (default 100000)")
    parser.add_argument("--keep", action="store_true", help="keep the generated dataset and print its path")
    args = parser.parse_args()
    os.environ["DPDECK_HOME"] = tempfile.mkdtemp(prefix="dpdeck-bench-home-")
    root = Path(tempfile.mkdtemp(prefix="dpdeck-bench-data-"))
    try:
        t = time.perf_counter()
        d = generate(root, args.n)
        print(f"generated {args.n} images + captions in {time.perf_counter() - t:.1f} s ({d})")
        # A real dataset was not written a second ago: settle the generator's dirty pages so the batch op's own
        # sync measures the op, not the generator.
        os.sync()
        scale = args.n / 100_000  # targets are for 100,000 images
        (root / "dataset.toml").write_text(
            "resolutions = [512]\nenable_ar_bucket = true\nmin_ar = 0.5\nmax_ar = 2.0\nnum_ar_buckets = 7\n"
            '[[directory]]\npath = "images"\n',
            encoding="utf-8",
        )
        (root / "main.toml").write_text(
            'output_dir = "/tmp/o"\ndataset = "dataset.toml"\nepochs = 1\nmicro_batch_size_per_gpu = 4\n'
            "gradient_accumulation_steps = 1\n",
            encoding="utf-8",
        )
        from engine.datasets import captions as c
        from engine.datasets.scan import scan
        from engine.datasets.undo import undo
        from tui.cli.cmd_dataset import bucket_preview

        read_everything(d)  # warm the page cache
        ref = timed(lambda: read_everything(d))
        print(f"reference: scandir + open/read of all {2 * args.n} files: {ref:.2f} s")
        report = scan(d)
        assert report.totals["captioned"] == args.n, report.totals
        line("scan (warm cache)", timed(lambda: scan(d)), 3 * scale, ref)
        preview = bucket_preview(root / "dataset.toml", str(root / "main.toml"), 1)
        assert preview["items"] > 0.99 * args.n, preview["items"]
        line(
            "bucket preview (warm cache)",
            timed(lambda: bucket_preview(root / "dataset.toml", str(root / "main.toml"), 1)),
            3 * scale,
            ref,
        )

        t = time.perf_counter()
        changes = c.plan(d, c.add_trigger("ohwx"))
        planned = time.perf_counter() - t
        op_id = c.apply(changes, "bench trigger")
        total = time.perf_counter() - t
        assert len(changes) == args.n and op_id
        line("trigger op (plan + undo record + write)", total, 10 * scale, ref)
        print(f"  of which plan {planned:.2f} s, journal + writes + sync {total - planned:.2f} s")
        # After the op and before its undo: the undo frees 100,000 inodes, which would slow the floor's creates.
        floor = create_floor(root, args.n)
        print(f"disk floor: create {args.n} new caption-sized files + one sync (one thread): {floor:.2f} s")
        print(f"the trigger op took {total / floor:.1f}x the disk floor (any atomic replace needs a new inode per file)")
        t = time.perf_counter()
        undo(op_id)
        print(f"undo of the trigger op (not a target): {time.perf_counter() - t:.2f} s")
        assert (d / "000000.txt").read_bytes().startswith(b"tag0,")
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(os.environ["DPDECK_HOME"], ignore_errors=True)


if __name__ == "__main__":
    main()

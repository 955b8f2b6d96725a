"""Datasets preview speed: a 4096x4096 JPEG (and a PNG for contrast) turned into the half-block cell grid.

Usage: python bench/bench_dataset_preview.py [-n 15] [--no-pilot] [--protocol halfblock|kitty|sixel]
Target: preview of the next image <= 100 ms for a 4096x4096 JPEG.

Prints, per file and preview size, the median of N runs of the preview path (tui.widgets.image_preview.
render_cells: reduced-scale decode + fit + strips) against a full-decode reference measured in the same run
(decode every pixel, then resize: what a preview without `Image.draft` costs). Then, in a real DeckApp driven by
Pilot (headless), the time from pressing `j` until the compositor draws the preview's cells of the next image
(the last line of the pane; writing the frame to a real terminal comes on top), cold (cache and prefetch off)
and as used (the neighbour was prefetched while the previous one was shown). `--protocol` forces the protocol
for that part. The table also gives the kitty (PNG for ssh, raw RGB for a local terminal) and sixel paths
(decode + encode, 10x20-pixel cells): these run on the preview thread too, and prefetch hides them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

SIDE = 4096
TARGET_MS = 100.0
# (label, cols, rows): the preview pane at an 80x24 terminal, at 200x60, and a whole 200x60 screen.
SIZES = [("80x24 pane", 32, 12), ("200x60 pane", 114, 41), ("200x60 full", 200, 60)]


def photo_like(path: Path, seed: int = 0) -> None:
    """Smooth colour fields plus grain: compresses like a photo (a flat image would decode unrealistically fast)."""
    noise = Image.effect_noise((SIDE, SIDE), 40).convert("L")
    grad = Image.linear_gradient("L").resize((SIDE, SIDE))
    rot = grad.rotate(90 + seed * 37)
    img = Image.merge("RGB", (grad, rot, noise))
    kw = {"quality": 90} if path.suffix == ".jpg" else {"compress_level": 6}
    img.save(path, **kw)


def median_ms(fn: Callable[[], object], n: int) -> float:
    fn()  # warm the file cache and PIL's plugin imports
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def full_decode(path: Path, cols: int, rows: int) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((cols, rows * 2), Image.Resampling.BILINEAR)
        return im


def bench_paths(folder: Path, n: int) -> None:
    from tui.widgets.image_preview import Mode, render_cells, render_kitty, render_sixel

    kitty_png, kitty_raw, sixel = Mode("kitty"), Mode("kitty", raw=True), Mode("sixel")
    print(
        f"{'file':<14}{'preview size':<22}{'preview ms':>11}{'full decode ms':>16}{'speed-up':>10}  target"
        f"{'kitty png':>11}{'kitty raw':>11}{'sixel':>9}"
    )
    for name in ("big.jpg", "big.png"):
        path = folder / name
        for label, cols, rows in SIZES:
            ours = median_ms(lambda p=path, c=cols, r=rows: render_cells(p, c, r), n)
            ref = median_ms(lambda p=path, c=cols, r=rows: full_decode(p, c, r), max(3, n // 3))
            png = median_ms(
                lambda p=path, c=cols, r=rows: render_kitty(p, c, r, kitty_png, 1), max(3, n // 3)
            )
            raw = median_ms(
                lambda p=path, c=cols, r=rows: render_kitty(p, c, r, kitty_raw, 1), max(3, n // 3)
            )
            six = median_ms(lambda p=path, c=cols, r=rows: render_sixel(p, c, r, sixel), max(3, n // 5))
            verdict = ("ok" if ours <= TARGET_MS else "MISSED") if name.endswith(".jpg") else "(contrast)"
            print(
                f"{name:<14}{f'{label} {cols}x{rows}':<22}{ours:>11.1f}{ref:>16.1f}{ref / ours:>9.1f}x  {verdict:<10}"
                f"{png:>9.1f}{raw:>11.1f}{six:>9.1f}"
            )


async def key_to_paint(folder: Path, size: tuple[int, int], prefetch: bool, presses: int) -> list[float]:
    from tests.tui_helpers import wait_until
    from tui.app import DeckApp
    from tui.screens.datasets.screen import DatasetsScreen
    from tui.widgets.image_preview import ImagePreview

    app = DeckApp(start_mode="datasets")
    out: list[float] = []
    async with app.run_test(size=size) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, DatasetsScreen), what="screen")
        screen = app.screen
        assert isinstance(screen, DatasetsScreen)
        await wait_until(pilot, lambda: len(screen.shown) > presses, what="images listed", timeout=60)
        preview = screen.query_one("#ds-preview", ImagePreview)
        # When the compositor asks the preview for its last line with the new image, the frame is being built.
        drawn: dict[Path, float] = {}
        original = preview.render_line

        def spy(y: int) -> object:
            strip = original(y)
            if y == preview.size.height - 1 and preview.painted_path is not None:
                drawn.setdefault(preview.painted_path, time.perf_counter())
            return strip

        preview.render_line = spy  # type: ignore[method-assign,assignment]
        if not prefetch:
            preview.prefetch = lambda paths: None  # type: ignore[method-assign]
        await wait_until(pilot, lambda: preview.painted_path == screen.shown[0].path, timeout=60)
        for i in range(1, presses + 1):
            if not prefetch:
                preview._renderer._cache.clear()
            else:
                await pilot.pause(
                    0.6
                )  # a user looks at an image for longer than its neighbour takes to prefetch
            want = screen.shown[i].path
            t = time.perf_counter()
            await pilot.press("j")
            await wait_until(pilot, lambda w=want: w in drawn, timeout=30, what="paint")
            out.append((drawn[want] - t) * 1000)
    return out


def bench_pilot(folder: Path, presses: int) -> None:
    os.environ["DPDECK_HOME"] = tempfile.mkdtemp(prefix="dpdeck-bench-home-")
    cwd = os.getcwd()
    os.chdir(folder / "set")  # the deck opens the folder it starts in
    try:
        protocol = os.environ.get("DPDECK_IMAGE_PROTOCOL", "halfblock (headless)")
        print(
            f"\nkey `j` to the next 4096x4096 JPEG's preview on screen (Pilot, headless DeckApp, {protocol}):"
        )
        for size in ((80, 24), (200, 60)):
            for prefetch in (False, True):
                times = asyncio.run(key_to_paint(folder / "set", size, prefetch, presses))
                label = "prefetched" if prefetch else "cold"
                print(
                    f"  {size[0]}x{size[1]} {label:<11} median {statistics.median(times):6.1f} ms  "
                    f"worst {max(times):6.1f} ms  (n={len(times)})  "
                    + ("ok" if statistics.median(times) <= TARGET_MS else "MISSED")
                )
    finally:
        os.chdir(cwd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=15, help="runs per measurement (median reported)")
    ap.add_argument("--presses", type=int, default=5, help="key presses per Pilot measurement")
    ap.add_argument("--no-pilot", action="store_true", help="skip the in-app key-to-paint measurement")
    ap.add_argument("--protocol", choices=("halfblock", "kitty", "sixel"), help="force it for the Pilot part")
    args = ap.parse_args()
    if args.protocol:
        os.environ["DPDECK_IMAGE_PROTOCOL"] = args.protocol
    with tempfile.TemporaryDirectory(prefix="dpdeck-bench-preview-") as tmp:
        folder = Path(tmp)
        print(f"generating {SIDE}x{SIDE} test images…", flush=True)
        photo_like(folder / "big.jpg")
        photo_like(folder / "big.png")
        print(
            f"jpeg {os.path.getsize(folder / 'big.jpg') / 2**20:.1f} MiB, "
            f"png {os.path.getsize(folder / 'big.png') / 2**20:.1f} MiB; median of {args.n} runs\n"
        )
        bench_paths(folder, args.n)
        if not args.no_pilot:
            (folder / "set").mkdir()
            for i in range(args.presses + 1):
                photo_like(folder / "set" / f"img_{i:02d}.jpg", seed=i)
                (folder / "set" / f"img_{i:02d}.txt").write_text(f"tag{i}, photo\n")
            bench_pilot(folder, args.presses)
    print("\n(a shared 2-core box under other load: figures are pessimistic)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

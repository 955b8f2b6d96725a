"""Loss (raw + smoothed) and LR over steps, with optional overlays of other runs, via plotext."""

from __future__ import annotations

from typing import Any

from textual.app import RenderResult
from textual_plotext import PlotextPlot


def smooth(values: list[float], alpha: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing)."""
    out: list[float] = []
    avg = 0.0
    for i, v in enumerate(values, start=1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha**i))
    return out


MAX_POINTS = 600  # a terminal plot is at most a few hundred braille dots wide
NICE_STEPS = (1, 2, 5)  # tick spacings: these times a power of ten
TICKS = 5  # at most this many x labels: at 80 columns a chart is ~25 cells wide


def int_ticks(lo: float, hi: float, most: int = TICKS) -> list[int]:
    """Whole-number x labels (steps, epochs) at a round spacing (1, 2, 5, 10, 20, ...) covering [lo, hi]:
    plotext's own labels are evenly spaced floats (`1.0 16.8 32.5`)."""
    first, last = int(lo // 1) + (lo % 1 > 0), int(hi // 1)
    if last < first:
        return [int(round(lo))]
    span = max(1, last - first)
    magnitude = 1
    while True:
        for nice in NICE_STEPS:
            spacing = nice * magnitude
            if span // spacing + 1 <= most:
                start = -(-first // spacing) * spacing  # the first multiple of the spacing >= first
                return list(range(start, last + 1, spacing)) or [first]
        magnitude *= 10


def series(metrics: list[dict[str, object]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for m in metrics:
        step, value = m.get("step"), m.get(key)
        if isinstance(step, int | float) and isinstance(value, int | float):
            xs.append(float(step))
            ys.append(float(value))
    return downsample(xs, ys)


def downsample(xs: list[float], ys: list[float], limit: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """Average consecutive points into at most `limit` buckets: plot cost stays flat on 100k-step runs."""
    n = len(xs)
    if n <= limit:
        return xs, ys
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(limit):
        lo, hi = b * n // limit, (b + 1) * n // limit
        out_x.append(sum(xs[lo:hi]) / (hi - lo))
        out_y.append(sum(ys[lo:hi]) / (hi - lo))
    return out_x, out_y


class CurvePlot(PlotextPlot):
    """Redrawn only when new data arrives (the Run screen polls at 1 Hz, under the 2 Hz budget)."""

    def __init__(self, title: str, key: str, *, smoothed: bool, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.title_text = title
        self.key = key
        self.smoothed = smoothed
        self.points = 0
        self._version = 0
        self._cached: tuple[Any, RenderResult] | None = None

    def render(self) -> RenderResult:
        # plotext rebuilds the whole chart on every render, and Textual re-renders on any repaint of the screen
        # (a header update, a log line): keep the built chart until the data, size or theme changes.
        key = (self.size.width, self.size.height, self._version, self.app.theme)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, super().render())
        return self._cached[1]

    def show(self, runs: list[tuple[str, list[dict[str, object]]]]) -> None:
        plt = self.plt
        self._version += 1
        plt.clear_data()
        plt.title(self.title_text)
        self.points = 0
        lo, hi = float("inf"), float("-inf")
        for label, metrics in runs:
            xs, ys = series(metrics, self.key)
            if not xs:
                continue
            self.points += len(xs)
            lo, hi = min(lo, xs[0], xs[-1]), max(hi, xs[0], xs[-1])
            plt.plot(xs, ys, label=f"{label}" if len(runs) > 1 else "raw", marker="braille")
            if self.smoothed and len(ys) > 2:
                plt.plot(
                    xs, smooth(ys), label=f"{label} smooth" if len(runs) > 1 else "smoothed", marker="braille"
                )
        if not self.points:
            plt.title(f"{self.title_text}: no data yet")
            plt.xticks([], [])  # (the last job's labels must not stay on an empty chart)
        else:
            ticks = int_ticks(lo, hi)
            plt.xticks([float(t) for t in ticks], [str(t) for t in ticks])
        self.refresh()

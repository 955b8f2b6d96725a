"""Loss (raw + smoothed) and LR over steps, with optional overlays of other runs, via plotext."""

from __future__ import annotations

from textual_plotext import PlotextPlot


def smooth(values: list[float], alpha: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing)."""
    out: list[float] = []
    avg = 0.0
    for i, v in enumerate(values, start=1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha**i))
    return out


def series(metrics: list[dict[str, object]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for m in metrics:
        step, value = m.get("step"), m.get(key)
        if isinstance(step, int | float) and isinstance(value, int | float):
            xs.append(float(step))
            ys.append(float(value))
    return xs, ys


class CurvePlot(PlotextPlot):
    """Redrawn only when new data arrives (the Run screen polls at 1 Hz, under the 2 Hz budget)."""

    def __init__(self, title: str, key: str, *, smoothed: bool, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.title_text = title
        self.key = key
        self.smoothed = smoothed
        self.points = 0

    def show(self, runs: list[tuple[str, list[dict[str, object]]]]) -> None:
        plt = self.plt
        plt.clear_data()
        plt.title(self.title_text)
        self.points = 0
        for label, metrics in runs:
            xs, ys = series(metrics, self.key)
            if not xs:
                continue
            self.points += len(xs)
            plt.plot(xs, ys, label=f"{label}" if len(runs) > 1 else "raw", marker="braille")
            if self.smoothed and len(ys) > 2:
                plt.plot(
                    xs, smooth(ys), label=f"{label} smooth" if len(runs) > 1 else "smoothed", marker="braille"
                )
        if not self.points:
            plt.title(f"{self.title_text}: no data yet")
        self.refresh()

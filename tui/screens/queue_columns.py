"""Which Queue columns fit the terminal, and how wide: no horizontal scrolling at 80 columns.

Columns are dropped from the least useful up until the rest fit; name and exit reason share what is left and
are cut with an ellipsis (the highlighted job's full line is under the table). A wider terminal brings the
dropped columns back.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text

CELL_PADDING = 1  # DataTable's default, each side of every cell


@dataclass(frozen=True)
class Col:
    key: str
    label: str
    width: int  # content width; the least a flexible column gets
    flex: int = 0  # share of the spare width
    most: int = 0  # a flexible column's widest (0 = no limit)


COLUMNS = (
    Col("id", "#", 3),
    Col("pos", "pos", 3),  # place in line of a queued job (1 = starts next): the order `dpdeck ls` prints
    Col("state", "state", 13),  # "✗ interrupted", the longest state badge
    Col("name", "name", 10, flex=1, most=28),
    Col("gpus", "GPUs", 4),
    Col("progress", "progress", 8, flex=1, most=13),  # "12000/50000 24%", or "24%" when narrower
    Col("epoch", "epoch", 5),
    Col("loss", "loss", 6),
    Col("sps", "smp/s", 6),
    Col("eta", "ETA", 7),
    Col("elapsed", "elapsed", 7),
    Col("reason", "exit reason", 11, flex=3),
)
DROP_ORDER = ("sps", "epoch", "elapsed", "loss", "gpus", "eta", "progress")  # first dropped first


def plan_columns(avail: int, id_digits: int = 1) -> tuple[tuple[str, str, int], ...]:
    """(key, label, content width) of the columns shown in `avail` cells, in display order."""
    cols = {c.key: c for c in COLUMNS}
    cols["id"] = Col("id", "#", max(3, id_digits))

    def need(keys: list[str]) -> int:
        return sum(cols[k].width + 2 * CELL_PADDING for k in keys)

    keys = [c.key for c in COLUMNS]
    for key in DROP_ORDER:
        if need(keys) <= avail:
            break
        keys.remove(key)
    widths = {k: cols[k].width for k in keys}
    spare = max(0, avail - need(keys))
    flexible = [k for k in keys if cols[k].flex]
    while spare and flexible:  # hand out the spare width by share, one round at a time
        total = sum(cols[k].flex for k in flexible)
        given = 0
        for key in list(flexible):
            add = max(1, spare * cols[key].flex // total) if spare - given > 0 else 0
            most = cols[key].most
            if most:
                add = min(add, most - widths[key])
            add = min(add, spare - given)
            widths[key] += add
            given += add
            if most and widths[key] >= most:
                flexible.remove(key)
        spare -= given
        if not given:
            break
    return tuple((k, cols[k].label, widths[k]) for k in keys)


def fit(value: Text | str, width: int) -> Text | str:
    """`value` cut to `width` cells with an ellipsis (a DataTable column of fixed width would just crop)."""
    if isinstance(value, Text):
        if value.cell_len <= width:
            return value
        cut = value.copy()
        cut.truncate(width, overflow="ellipsis")
        return cut
    if cell_len(value) <= width:
        return value
    text = Text(value)
    text.truncate(width, overflow="ellipsis")
    return text.plain

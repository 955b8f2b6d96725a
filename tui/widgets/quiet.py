"""Update a Static only when its content changed, and lay the screen out again only when its height did.

`Static.update` lays out the whole screen by default, and a layout re-renders every widget on it: polled
screens that call it every tick with the same text pay that for nothing.
"""

from __future__ import annotations

from textual.geometry import Size
from textual.widgets import Static


def set_content(widget: Static, content: str) -> bool:
    """Show `content` (markup or plain, as the widget takes it); False when it was already shown."""
    if widget.content == content:
        return False
    width = widget.content_region.width
    if not widget.is_mounted or not width:
        widget.update(content)  # not laid out yet: the first layout sizes it anyway
        return True
    before = widget.content_region.height
    widget.update(content, layout=False)
    # Same width, so the wrapped height decides whether anything around it moves.
    if widget.styles.height is None or widget.styles.height.is_auto:
        after = widget.get_content_height(Size(width, before), Size(width, before), width)
        if after != before:
            widget.refresh(layout=True)
    return True

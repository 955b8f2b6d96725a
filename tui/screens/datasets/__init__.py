"""The Datasets screen, in parts: `screen` (layout, keys, caption editing, the input line), `file_list` (the
table and the shown image), `filters` (filters and report panels), `batch` (batch caption operations and
undo), `workers` (every thread: they only read or write the disk and post the typed messages of `messages`)
and `state` (what all parts share)."""

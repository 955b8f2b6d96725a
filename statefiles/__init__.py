"""The bottom layer every other package imports: where dpdeck's files live and how they are read and written.

`paths` (the private state dir), `atomic` (crash-safe writes), `toml` (one read-only TOML parser for every
Python dpdeck supports). It imports nothing of dpdeck's and nothing heavy, so `profiles`, `engine` and `tui`
can all stand on it without import circles.
"""

__version__ = "0.1.0"

"""dpdeck's presentation layer: the Textual deck and the `dpdeck` command line. Never imports torch."""

from statefiles import __version__

__all__ = ["__version__"]

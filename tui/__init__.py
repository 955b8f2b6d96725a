"""dpdeck's presentation layer: the Textual deck and the `dpdeck` command line. Never imports torch."""

__version__ = "0.1.0"

"""Dataset scanning and aspect-ratio bucketing with diffusion-pipe's semantics.

Pure python + PIL (numpy optional) so the dataset tool, the TUI and the trainer share one implementation
without importing torch.
"""

from engine.datasets.buckets import Bucket, BucketPlan, DatasetConfigError, plan_buckets
from engine.datasets.items import DatasetItem, ScanResult, scan_directory

__all__ = [
    "Bucket",
    "BucketPlan",
    "DatasetConfigError",
    "DatasetItem",
    "ScanResult",
    "plan_buckets",
    "scan_directory",
]

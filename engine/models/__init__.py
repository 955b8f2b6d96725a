"""Base models: the registry of known weights, local discovery, family detection, Hub downloads, and
filling a profile's [model] keys. Nothing here imports torch: checkpoints are identified from headers only.
"""

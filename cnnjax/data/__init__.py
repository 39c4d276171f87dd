"""Datasets: the embedded `digits` (and `digits_scenes`) and any prepared tfds catalogue entry.

Both are read through `tfds` data sources (ArrayRecord, random access, no TensorFlow)
and fed to grain pipelines (`cnnjax.data.pipeline`).
"""

from cnnjax.data.sources import DataInfo, FeatureInfo, open_source, open_sources, resolve_data_dir

__all__ = [
    "DataInfo",
    "FeatureInfo",
    "open_source",
    "open_sources",
    "resolve_data_dir",
]

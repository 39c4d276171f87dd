"""Datasets: the embedded `digits` and any prepared tensorflow-datasets catalogue entry.

Both are read through `tfds` data sources (ArrayRecord, random access, no TensorFlow)
and fed to grain pipelines (`cnnjax.data.pipeline`).
"""

from cnnjax.data.sources import DataInfo, open_sources, resolve_data_dir

__all__ = ["DataInfo", "open_sources", "resolve_data_dir"]

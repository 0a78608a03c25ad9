"""Datasets by name: `load_dataset("mnist", "test")` -> (x float32 NCHW, y int64).

See `mcel.data.datasets` for where files are looked up and how images are normalised,
and `mcel.data.readers` for the file formats.
"""

from mcel.data.datasets import (
    DATASETS,
    DatasetInfo,
    dataset_file,
    dataset_info,
    is_own,
    list_datasets,
    load_arrays,
    load_dataset,
    resolve_data_dir,
)

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "dataset_file",
    "dataset_info",
    "is_own",
    "list_datasets",
    "load_arrays",
    "load_dataset",
    "resolve_data_dir",
]

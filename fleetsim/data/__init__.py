"""Offline datasets and partitioners."""

from fleetsim.data import files as _files  # noqa: F401  (registers file datasets)
from fleetsim.data.datasets import DATASETS, Dataset, load_dataset
from fleetsim.data.partition import PARTITIONERS, Partition, make_partition, partition_sizes

__all__ = ["DATASETS", "PARTITIONERS", "Dataset", "Partition", "load_dataset", "make_partition",
           "partition_sizes"]

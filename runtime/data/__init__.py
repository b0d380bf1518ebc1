"""The data layer: sources (readers of whole data sets), downloads, and batches for training and evaluation."""
from netspec.runtime.data.batches import Batches, augment_batch
from netspec.runtime.data.sources import Dataset, data_root, load_dataset

__all__ = ["Batches", "Dataset", "augment_batch", "data_root", "load_dataset"]

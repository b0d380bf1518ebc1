"""The `data:` section: which data set, where it is, how training batches are augmented.

`SOURCES` names every source the schema accepts; each has one reader class in
`netspec.runtime.data.sources` (a test keeps the two in step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from netspec.schema_base import Strict
from pydantic import PrivateAttr


@dataclass(frozen=True)
class SourceInfo:
    """What the schema and the docs know of a data source."""

    description: str
    downloadable: bool = False


SOURCES = {
    "fashion-mnist": SourceInfo("Fashion-MNIST IDX files (Debian's dataset-fashion-mnist, or downloaded)", True),
    "mnist": SourceInfo("MNIST IDX files", True),
    "idx": SourceInfo("any IDX files named like MNIST's"),
    "cifar10": SourceInfo("CIFAR-10 python-pickle batches", True),
    "cifar100": SourceInfo("CIFAR-100 python-pickle batches", True),
    "imagefolder": SourceInfo("a tree of class directories of images (train/<class>/*, test/<class>/*)"),
    "npz": SourceInfo("arrays x_train, y_train, x_test, y_test (and optionally classes) in one .npz"),
    "synthetic": SourceInfo("no files: seeded random images of the input's shape and labels of the spec's classes, "
                            "data.train_limit / test_limit of them (default 256 / 64), like Caffe's DummyData"),
    "lmdb": SourceInfo("Caffe LMDB databases of Datum records (BGR): data.path the training one, data.test_path "
                       "the test one"),
}
SYNTHETIC_SIZES = (256, 64)  # training / test images of `source: synthetic` without limits (ours)
STREAMED_SOURCES = ("imagefolder", "lmdb")
DOWNLOADABLE = [name for name, info in SOURCES.items() if info.downloadable]


class Augment(Strict):
    """Training-time augmentation, done batched on the device."""

    __section__ = "data.augment"

    crop_pad: int = Field(0, ge=0, le=1024, description="Pad each side by this many pixels, then crop a random window of the original size (CIFAR uses 4); 0 turns it off.")
    flip: bool = Field(False, description="Flip each training image horizontally with probability 1/2.")


CROPS = {
    "none": "resize every image to the input's H×W (no crop, no mirror)",
    "caffe": "Caffe's recipe: resize (data.resize, default 256 for a 227 input), then a random input-sized crop and a random "
             "mirror for training, the centre crop for test (source lmdb: no resize, and the mirror only with data.augment.flip, as "
             "Caffe's crop_size and mirror)",
    "random_resized": "the modern recipe: a random crop of 8-100% of the area and aspect 3/4-4/3 resized to the input, "
                      "plus a random mirror, for training; resize (data.resize) and centre crop for test",
}
# `stream: auto` streams an imagefolder set whose decoded images would take more than this many bytes
STREAM_AUTO_BYTES = 1 << 30


class DataSpec(Strict):
    """Where the training data comes from and how it is augmented."""

    __section__ = "data"

    source: Literal[tuple(SOURCES)] = Field("fashion-mnist", description="The data set's format: " + "; ".join(
        f"{name}: {info.description}" for name, info in SOURCES.items()) + ".")
    path: str | None = Field(None, description="Directory (or .npz file) holding the data. Default: /usr/share/datasets/fashion-mnist for fashion-mnist when it exists, else $NETSPEC_CACHE/<source> (NETSPEC_CACHE defaults to ~/.cache/netspec).")
    download: bool = Field(False, description=f"Download missing files into the data directory, checking their published MD5 ({', '.join(DOWNLOADABLE)} only). NETSPEC_DATA_MIRROR replaces the download base URL.")
    augment: Augment = Field(default_factory=Augment, description="Random augmentation of training batches.")
    train_limit: int | None = Field(None, ge=1, description="Use only the first N training examples (for smoke runs).")
    test_limit: int | None = Field(None, ge=1, description="Use only the first N test examples (for smoke runs).")
    val_split: int | float | None = Field(None, description="Hold N training examples (a count, or a fraction 0 < f < 1) out of training as the validation split, drawn with data.val_seed before data.train_limit applies; best.pt and calibration thresholds are chosen on it (docs/training.md).")
    val_seed: int = Field(0, ge=0, lt=2**32, description="Seed of the validation split's draw (data.val_split), independent of train.seed.")
    classes: list[str] | None = Field(None, min_length=1, description="Class names, by label index, overriding those the data set carries.")
    stream: bool | Literal["auto"] = Field("auto", description=f"Decode image files on the fly in DataLoader worker processes instead of holding the decoded set in memory (imagefolder only). auto: stream when data.crop or data.resize is set, or when the decoded images would exceed {STREAM_AUTO_BYTES >> 30} GiB.")
    workers: int = Field(2, ge=0, le=64, description="DataLoader worker processes decoding images when streaming (0: decode in the training process).")
    resize: int | list[int] | None = Field(None, description="Streaming: resize before cropping, to this shorter side (e.g. 256) or exactly [H, W]; default input size × 256/227 (crop: none: the input size)")
    test_path: str | None = Field(None, description="lmdb: the test database (the source of Caffe's TEST-phase Data layer); data.path is the training one.")
    mean_file: str | None = Field(None, description="lmdb: a Caffe mean image (.binaryproto, as compute_image_mean writes it, the size of the records), subtracted pixel by pixel (and cropped with the image) before input.mean/input.std, as Caffe's transform_param.mean_file.")
    crop: Literal[tuple(CROPS)] = Field("none", description="Streaming crops: " + "; ".join(f"{k}: {v}" for k, v in CROPS.items()) + ". Mean and std subtraction stay input.mean/input.std.")

    _class_count: int | None = PrivateAttr(None)  # the spec's `classes:` (set by Spec): synthetic labels

    @model_validator(mode="after")
    def _stream_settings(self) -> DataSpec:
        sizes = [self.resize] if isinstance(self.resize, int) else self.resize or []
        if len(sizes) not in (0, 1, 2) or any(not 1 <= v <= 8192 for v in sizes):
            raise ValueError(f"data.resize is a shorter side or [H, W], each 1..8192, not {self.resize}")
        if self.stream is True and self.source not in STREAMED_SOURCES:
            raise ValueError(f"data.stream: true works for sources {', '.join(STREAMED_SOURCES)}, not '{self.source}'")
        if (self.crop != "none" or self.resize is not None) and self.source != "synthetic" and \
                (self.source not in STREAMED_SOURCES or self.stream is False):
            raise ValueError("data.crop and data.resize need the streaming pipeline: source: imagefolder or lmdb and "
                             "data.stream: true or auto")
        if self.source == "lmdb" and (self.stream is False or self.resize is not None or self.crop == "random_resized"):
            raise ValueError("source lmdb streams Caffe's records as they are: data.stream: false, data.resize and "
                             "data.crop: random_resized do not apply (data.crop: caffe crops as Caffe's crop_size)")
        if (self.test_path is not None or self.mean_file is not None) and self.source != "lmdb":
            raise ValueError("data.test_path and data.mean_file are for source lmdb")
        return self

    @field_validator("val_split", mode="before")
    @classmethod
    def _val_split_size(cls, value):
        if isinstance(value, bool) or (isinstance(value, int) and value < 1) or (
                isinstance(value, float) and not 0 < value < 1):
            raise ValueError(f"a count of examples (1 or more) or a fraction between 0 and 1, not {value!r}")
        return value

    @model_validator(mode="after")
    def _download_needs_a_mirror(self) -> DataSpec:
        if self.download and self.source not in DOWNLOADABLE:
            raise ValueError(f"data.download works for {', '.join(DOWNLOADABLE)}, not for source '{self.source}'")
        return self

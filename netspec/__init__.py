"""netspec: a Caffe-style declarative graph compiler for deeply-supervised CNNs."""

__version__ = "0.1.0"

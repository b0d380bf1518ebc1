"""The fields of Caffe's messages that a .prototxt may hold, by name (from BVLC caffe's src/caffe/proto/caffe.proto).

Kinds: i int32, u uint32, l int64, f float, b bool, s quoted string, `e:A|B=7` an enum (numbered in order
unless `=N`), a capitalised word a sub-message of that type, OPAQUE ("*") a message or value read but not checked
(layer parameters of layer types netspec does not import: those layers are refused by type, with a better error).
A trailing `+` marks a `repeated` field: any other field given twice is an error, as in protobuf's text parser.
"""
from __future__ import annotations

OPAQUE = "*"

_ENGINE = "e:DEFAULT|CAFFE|CUDNN"
_PHASE = "e:TRAIN|TEST"

V1_TYPES = ("e:NONE|ACCURACY|BNLL|CONCAT|CONVOLUTION|DATA|DROPOUT|EUCLIDEAN_LOSS|FLATTEN|HDF5_DATA|HDF5_OUTPUT|"
            "IM2COL|IMAGE_DATA|INFOGAIN_LOSS|INNER_PRODUCT|LRN|MULTINOMIAL_LOGISTIC_LOSS|POOLING|RELU|SIGMOID|"
            "SOFTMAX|SOFTMAX_LOSS|SPLIT|TANH|WINDOW_DATA|ELTWISE|POWER|SIGMOID_CROSS_ENTROPY_LOSS|HINGE_LOSS|"
            "MEMORY_DATA|ARGMAX|THRESHOLD|DUMMY_DATA|SLICE|MVN|ABSVAL|SILENCE|CONTRASTIVE_LOSS|EXP|DECONVOLUTION")

_LAYER_PARAMS = {  # LayerParameter's per-type parameter messages (those netspec reads are checked)
    "accuracy_param": "AccuracyParameter", "argmax_param": OPAQUE, "batch_norm_param": "BatchNormParameter",
    "bias_param": OPAQUE, "concat_param": "ConcatParameter", "contrastive_loss_param": OPAQUE,
    "convolution_param": "ConvolutionParameter", "crop_param": OPAQUE, "data_param": "DataParameter",
    "dropout_param": "DropoutParameter", "dummy_data_param": OPAQUE, "eltwise_param": "EltwiseParameter",
    "elu_param": OPAQUE, "embed_param": OPAQUE, "exp_param": OPAQUE, "flatten_param": "FlattenParameter",
    "hdf5_data_param": "HDF5DataParameter", "hdf5_output_param": OPAQUE, "hinge_loss_param": OPAQUE,
    "image_data_param": "ImageDataParameter", "infogain_loss_param": OPAQUE,
    "inner_product_param": "InnerProductParameter", "input_param": "InputParameter", "log_param": OPAQUE,
    "lrn_param": "LRNParameter", "memory_data_param": OPAQUE, "mvn_param": OPAQUE, "parameter_param": OPAQUE,
    "pooling_param": "PoolingParameter", "power_param": OPAQUE, "prelu_param": "PReLUParameter",
    "python_param": OPAQUE, "recurrent_param": OPAQUE, "reduction_param": OPAQUE, "relu_param": "ReLUParameter",
    "reshape_param": OPAQUE, "scale_param": "ScaleParameter", "sigmoid_param": "SigmoidParameter",
    "softmax_param": "SoftmaxParameter", "spp_param": OPAQUE, "slice_param": OPAQUE, "tanh_param": "TanHParameter",
    "threshold_param": OPAQUE, "tile_param": OPAQUE, "window_data_param": OPAQUE,
    "transform_param": "TransformationParameter", "loss_param": "LossParameter",
}

MESSAGES: dict[str, dict[str, str]] = {
    "NetParameter": {"name": "s", "input": "s+", "input_shape": "BlobShape+", "input_dim": "i+",
                     "force_backward": "b", "state": "NetState", "debug_info": "b",
                     "layer": "LayerParameter+", "layers": "V1LayerParameter+"},
    "BlobShape": {"dim": "l+"},
    "BlobProto": {"shape": "BlobShape", "data": "f+", "diff": "f+", "double_data": "f+", "double_diff": "f+",
                  "num": "i", "channels": "i", "height": "i", "width": "i"},
    "NetState": {"phase": _PHASE, "level": "i", "stage": "s+"},
    "NetStateRule": {"phase": _PHASE, "min_level": "i", "max_level": "i", "stage": "s+", "not_stage": "s+"},
    "ParamSpec": {"name": "s", "share_mode": "e:STRICT|PERMISSIVE", "lr_mult": "f", "decay_mult": "f"},
    "LayerParameter": {"name": "s", "type": "s", "bottom": "s+", "top": "s+", "phase": _PHASE, "loss_weight": "f+",
                       "param": "ParamSpec+", "blobs": "BlobProto+", "propagate_down": "b+",
                       "include": "NetStateRule+", "exclude": "NetStateRule+", **_LAYER_PARAMS},
    "V1LayerParameter": {"bottom": "s+", "top": "s+", "name": "s", "include": "NetStateRule+",
                         "exclude": "NetStateRule+", "type": V1_TYPES, "blobs": "BlobProto+", "param": "s+",
                         "blob_share_mode": "e:STRICT|PERMISSIVE+", "blobs_lr": "f+", "weight_decay": "f+",
                         "loss_weight": "f+", "layer": OPAQUE,
                         **{k: v for k, v in _LAYER_PARAMS.items() if k not in (
                             "batch_norm_param", "bias_param", "crop_param", "elu_param", "embed_param",
                             "flatten_param", "input_param", "log_param", "parameter_param", "prelu_param",
                             "recurrent_param", "reduction_param", "reshape_param", "scale_param", "spp_param",
                             "tile_param")}},
    "FillerParameter": {"type": "s", "value": "f", "min": "f", "max": "f", "mean": "f", "std": "f", "sparse": "i",
                        "variance_norm": "e:FAN_IN|FAN_OUT|AVERAGE"},
    "TransformationParameter": {"scale": "f", "mirror": "b", "crop_size": "u", "mean_file": "s",
                                "mean_value": "f+", "force_color": "b", "force_gray": "b"},
    "LossParameter": {"ignore_label": "i", "normalization": "e:FULL|VALID|BATCH_SIZE|NONE", "normalize": "b"},
    "AccuracyParameter": {"top_k": "u", "axis": "i", "ignore_label": "i"},
    "BatchNormParameter": {"use_global_stats": "b", "moving_average_fraction": "f", "eps": "f"},
    "ConcatParameter": {"axis": "i", "concat_dim": "u"},
    "ConvolutionParameter": {"num_output": "u", "bias_term": "b", "pad": "u+", "kernel_size": "u+", "stride": "u+",
                             "dilation": "u+", "pad_h": "u", "pad_w": "u", "kernel_h": "u", "kernel_w": "u",
                             "stride_h": "u", "stride_w": "u", "group": "u", "weight_filler": "FillerParameter",
                             "bias_filler": "FillerParameter", "engine": _ENGINE, "axis": "i",
                             "force_nd_im2col": "b"},
    "DataParameter": {"source": "s", "batch_size": "u", "rand_skip": "u", "backend": "e:LEVELDB|LMDB",
                      "scale": "f", "mean_file": "s", "crop_size": "u", "mirror": "b", "force_encoded_color": "b",
                      "prefetch": "u"},
    "ImageDataParameter": {"source": "s", "batch_size": "u", "rand_skip": "u", "shuffle": "b", "new_height": "u",
                           "new_width": "u", "is_color": "b", "scale": "f", "mean_file": "s", "crop_size": "u",
                           "mirror": "b", "root_folder": "s"},
    "HDF5DataParameter": {"source": "s", "batch_size": "u", "shuffle": "b"},
    "DropoutParameter": {"dropout_ratio": "f", "scale_train": "b"},
    "EltwiseParameter": {"operation": "e:PROD|SUM|MAX", "coeff": "f+", "stable_prod_grad": "b"},
    "FlattenParameter": {"axis": "i", "end_axis": "i"},
    "InnerProductParameter": {"num_output": "u", "bias_term": "b", "weight_filler": "FillerParameter",
                              "bias_filler": "FillerParameter", "axis": "i", "transpose": "b"},
    "InputParameter": {"shape": "BlobShape+"},
    "LRNParameter": {"local_size": "u", "alpha": "f", "beta": "f", "norm_region": "e:ACROSS_CHANNELS|WITHIN_CHANNEL",
                     "k": "f", "engine": _ENGINE},
    "PoolingParameter": {"pool": "e:MAX|AVE|STOCHASTIC", "pad": "u", "pad_h": "u", "pad_w": "u", "kernel_size": "u",
                         "kernel_h": "u", "kernel_w": "u", "stride": "u", "stride_h": "u", "stride_w": "u",
                         "engine": _ENGINE, "global_pooling": "b", "round_mode": "e:CEIL|FLOOR"},
    "PReLUParameter": {"filler": "FillerParameter", "channel_shared": "b"},
    "ReLUParameter": {"negative_slope": "f", "engine": _ENGINE},
    "ScaleParameter": {"axis": "i", "num_axes": "i", "filler": "FillerParameter", "bias_term": "b",
                       "bias_filler": "FillerParameter"},
    "SigmoidParameter": {"engine": _ENGINE},
    "SoftmaxParameter": {"engine": _ENGINE, "axis": "i"},
    "TanHParameter": {"engine": _ENGINE},
    "SolverParameter": {
        "net": "s", "net_param": OPAQUE, "train_net": "s", "test_net": "s+", "train_net_param": OPAQUE,
        "test_net_param": OPAQUE, "train_state": OPAQUE, "test_state": OPAQUE, "test_iter": "i+",
        "test_interval": "i", "test_compute_loss": "b", "test_initialization": "b", "base_lr": "f", "display": "i",
        "average_loss": "i", "max_iter": "i", "iter_size": "i", "lr_policy": "s", "gamma": "f", "power": "f",
        "momentum": "f", "weight_decay": "f", "regularization_type": "s", "stepsize": "i", "stepvalue": "i+",
        "clip_gradients": "f", "snapshot": "i", "snapshot_prefix": "s", "snapshot_diff": "b",
        "snapshot_format": "e:HDF5|BINARYPROTO", "solver_mode": "e:CPU|GPU", "device_id": "i", "random_seed": "l",
        "type": "s", "delta": "f", "momentum2": "f", "rms_decay": "f", "debug_info": "b",
        "snapshot_after_train": "b", "solver_type": "e:SGD|NESTEROV|ADAGRAD|RMSPROP|ADADELTA|ADAM",
        "layer_wise_reduce": "b", "weights": "s+"},
}


def repeated(kind: str) -> bool:
    return kind.endswith("+")


def base(kind: str) -> str:
    """The kind without its `repeated` mark."""
    return kind[:-1] if kind.endswith("+") else kind

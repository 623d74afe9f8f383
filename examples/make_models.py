"""Build the small, seeded example models that inferd's docs, tests and benchmarks use.

Run ``python examples/make_models.py [--out examples/models]``. Everything is made from fixed seeds, with
no download and no TensorFlow/PyTorch, and running it twice gives byte-identical files:

classifier_float.onnx      float32 ``input`` [N,3,64,64] NCHW, ImageNet-normalized RGB -> ``logits`` [N,10]
                           float32. Conv3x3/s2/pad1 3->8 + Relu, Conv3x3/s2/pad1 8->16 + Relu,
                           GlobalAveragePool, Flatten, Gemm 16->10. The reference for everything below.
classifier_int8.onnx       the same, statically quantized to QDQ (uint8 activations, int8 per-channel
                           weights, MinMax calibration on 32 synthetic images); same float32 input, float32
                           logits.
classifier_uint8_nhwc.onnx camera-frame variant: ``input`` uint8 [N,64,64,3] NHWC RGB. The graph itself
                           transposes to NCHW, casts to float, scales by 1/255 and normalizes with the
                           ImageNet mean/std, then runs the same network; QDQ-quantized like classifier_int8.
classifier_int8.tflite     the same network (same weights) as a full-integer TFLite model, written directly
                           with flatbuffers: ``input`` int8 [1,64,64,3] NHWC holding the normalized image
                           quantized with the tensor's scale/zero point -> ``logits`` int8 [1,10].
labels.txt                 the 10 class names, one per line.
larger_float.onnx          a heavier classifier for benchmarks (~4.5 ms float, ~1.6 ms int8 per image on one
larger_int8.onnx           x86 core): ``input`` float32 [batch,3,224,224] -> ``logits`` [batch,10]; six
                           3x3 convs up to 192 channels, same head and normalization; float and QDQ.

The weights are random (He-normal), so the classes mean nothing; but every layer is rescaled on seeded
synthetic images (like a folded BatchNorm) so that activations are well conditioned and the logits differ
from image to image: the top-1 class changes across inputs, which makes the float-vs-quantized agreement
checks in tests/test_examples.py meaningful. Image helpers for callers and tests: calibration_images(),
normalize_nchw(), normalize_nhwc(); builders: build_float(), build_larger_float(), quantize_qdq(),
quantize_qoperator(), quantize_dynamic(), build_tflite(), build_all().
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
from pathlib import Path

import flatbuffers
import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as tfl
from onnx import TensorProto, helper, numpy_helper
from onnxruntime import quantization as ortq

# ----------------------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------------------

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
LABELS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett"]
NUM_CLASSES = len(LABELS)

SMALL_SIZE = 64
SMALL_CONVS = [(3, 8, 2), (8, 16, 2)]  # (in channels, out channels, stride); all 3x3, pad 1
LARGE_SIZE = 224
LARGE_CONVS = [(3, 24, 2), (24, 48, 2), (48, 96, 2), (96, 96, 1), (96, 192, 2), (192, 192, 1)]

SMALL_WEIGHT_SEED, LARGE_WEIGHT_SEED = 0, 1
INIT_SEED = 100  # images used to rescale the random weights
CALIB_SEED = 200  # images used to calibrate quantization (ONNX and TFLite)
HELDOUT_SEED = 300  # images the tests compare models on; never used while building
N_INIT, N_INIT_LARGE, N_CALIB, N_CALIB_LARGE = 32, 16, 32, 16
# Mean of every conv pre-activation (in standard deviations) on the init images: ~70% of the ReLUs are
# active. Over 8 weight seeds x 64 held-out images, +0.5 raised the worst float-vs-int8 logit cosine from
# 0.966 to 0.984 (simulated TFLite) versus 0; sparser features (-0.5 and below) made it worse.
RELU_OFFSET = 0.5

OPSET, IR_VERSION = 17, 8  # IR 8 / opset 17 load in onnxruntime >= 1.14 (checked with 1.16 and 1.32)
PRODUCER = ("inferd-examples", "1")

# Normalized values of a [0, 1] pixel: the full range a normalized image can take (about [-2.12, 2.64]).
NORM_RANGE = (float(np.min(-IMAGENET_MEAN / IMAGENET_STD)), float(np.max((1 - IMAGENET_MEAN) / IMAGENET_STD)))

# ----------------------------------------------------------------------------------------------------------
# Synthetic images
# ----------------------------------------------------------------------------------------------------------


def _upsample_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src] matrix doing 1-D linear interpolation (corners aligned)."""
    pos = np.linspace(0.0, src - 1.0, dst)
    lo = np.minimum(np.floor(pos).astype(int), src - 2)
    frac = pos - lo
    m = np.zeros((dst, src))
    m[np.arange(dst), lo] = 1.0 - frac
    m[np.arange(dst), lo + 1] = frac
    return m


def calibration_images(n: int, seed: int, size: int = SMALL_SIZE) -> np.ndarray:
    """n seeded synthetic RGB images, uint8 [n, size, size, 3] NHWC.

    Cycles through three kinds: smooth noise (a 2..8 pixel random grid, bilinearly upsampled), colour
    gradients, and a filled disc or square on a smooth background; plus a little pixel noise.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        g = int(rng.choice([2, 3, 4, 8]))
        m = _upsample_matrix(g, size)
        img = np.stack([m @ grid @ m.T for grid in rng.random((3, g, g))], axis=-1)
        kind = i % 3
        if kind == 1:
            angle = rng.uniform(0, 2 * np.pi)
            ramp = np.cos(angle) * xx + np.sin(angle) * yy
            ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-9)
            lo, hi = rng.random(3), rng.random(3)
            img = 0.3 * img + 0.7 * (lo + ramp[..., None] * (hi - lo))
        elif kind == 2:
            cy, cx, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.12, 0.3)
            if rng.random() < 0.5:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            else:
                mask = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)
            img = np.where(mask[..., None], rng.random(3), 0.5 * img)
        img = img + rng.normal(0.0, 0.02, img.shape)
        out[i] = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return out


def normalize_nchw(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> ImageNet-normalized float32 NCHW: the input the float-input models expect."""
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def normalize_nhwc(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> ImageNet-normalized float32 NHWC (what the TFLite model's input represents)."""
    return np.ascontiguousarray(normalize_nchw(images).transpose(0, 2, 3, 1))


# ----------------------------------------------------------------------------------------------------------
# Weights: He-normal, then rescaled on seeded images (numpy reference network, float64)
# ----------------------------------------------------------------------------------------------------------


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """3x3 convolution with padding 1 (ONNX Conv pads=[1,1,1,1]): NHWC input, OIHW weights, NHWC output."""
    _, height, width, cin = x.shape
    oh, ow = (height - 1) // stride + 1, (width - 1) // stride + 1
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = [
        xp[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride]
        for i in range(3)
        for j in range(3)
    ]
    return np.concatenate(taps, axis=-1) @ w.transpose(2, 3, 1, 0).reshape(9 * cin, -1) + b


def forward(weights: dict, x: np.ndarray) -> dict:
    """Float64 forward pass of the classifier on normalized NCHW input; returns every activation (NHWC)."""
    h = x.astype(np.float64).transpose(0, 2, 3, 1)
    acts = {"input": h}
    i = 0
    while f"conv{i}_w" in weights:
        w = weights[f"conv{i}_w"]
        h = np.maximum(conv2d(h, w, weights[f"conv{i}_b"], weights[f"conv{i}_stride"]), 0.0)
        acts[f"conv{i}"] = h
        i += 1
    h = h.mean(axis=(1, 2))
    acts["gap"] = h
    acts["logits"] = h @ weights["fc_w"].T + weights["fc_b"]
    return acts


def make_weights(convs: list, size: int, seed: int, n_init: int) -> dict:
    """Seeded weights for Conv(+Relu) layers, GAP and a 10-way Gemm (fc_w is [out, in]).

    He-normal weights; then each conv's pre-activations are rescaled to mean RELU_OFFSET / unit variance
    over n_init seeded images (a folded BatchNorm), and the Gemm whitens and centres its input features, so
    the logits vary with the image instead of being dominated by a constant. Statistics are taken in
    float64 and the weights rounded to float32 at the end.
    """
    rng = np.random.default_rng(seed)
    h = normalize_nhwc(calibration_images(n_init, INIT_SEED, size)).astype(np.float64)
    weights: dict = {}
    for i, (cin, cout, stride) in enumerate(convs):
        w = rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))
        z = conv2d(h, w, np.zeros(cout), stride)
        mean, std = z.mean(axis=(0, 1, 2)), z.std(axis=(0, 1, 2)) + 1e-6
        weights[f"conv{i}_w"] = (w / std[:, None, None, None]).astype(np.float32)
        weights[f"conv{i}_b"] = (RELU_OFFSET - mean / std).astype(np.float32)
        weights[f"conv{i}_stride"] = stride
        h = np.maximum((z - mean) / std + RELU_OFFSET, 0.0)
    feats = h.mean(axis=(1, 2))
    mu, sd = feats.mean(axis=0), feats.std(axis=0)
    sd = np.maximum(sd, 0.1 * np.median(sd))  # keep a nearly constant feature from getting a huge weight
    fc = rng.standard_normal((NUM_CLASSES, feats.shape[1])) / np.sqrt(feats.shape[1]) * 2.0 / sd
    weights["fc_w"] = fc.astype(np.float32)
    weights["fc_b"] = (-fc @ mu).astype(np.float32)
    return weights


def small_weights() -> dict:
    return make_weights(SMALL_CONVS, SMALL_SIZE, SMALL_WEIGHT_SEED, N_INIT)


def large_weights() -> dict:
    return make_weights(LARGE_CONVS, LARGE_SIZE, LARGE_WEIGHT_SEED, N_INIT_LARGE)


# ----------------------------------------------------------------------------------------------------------
# ONNX: float models
# ----------------------------------------------------------------------------------------------------------


def _save_onnx(model: onnx.ModelProto, path) -> None:
    """Pin everything that would otherwise vary with the tool versions, check and save."""
    model.producer_name, model.producer_version = PRODUCER
    model.ir_version = IR_VERSION
    model.doc_string = ""
    del model.metadata_props[:]
    onnx.checker.check_model(model)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, os.fspath(path))


def _classifier_graph(weights: dict, size: int, batch: str, uint8_nhwc: bool, name: str) -> onnx.ModelProto:
    nodes, inits = [], []

    def node(op: str, inputs: list, output: str, **attrs) -> str:
        """Append a node named like its output; (name, array) inputs become initializers."""
        names = []
        for value in inputs:
            if isinstance(value, tuple):
                inits.append(numpy_helper.from_array(np.asarray(value[1]), value[0]))
                value = value[0]
            names.append(value)
        nodes.append(helper.make_node(op, names, [output], name=output, **attrs))
        return output

    if uint8_nhwc:
        inp = helper.make_tensor_value_info("input", TensorProto.UINT8, [batch, size, size, 3])
        # Transpose first (on bytes), then normalize. (x - mean) / std is one BatchNormalization (mean, var =
        # std^2, scale 1, bias 0, epsilon 0): with Sub/Div by [1,3,1,1] constants, onnxruntime's layout
        # transformer for the quantized convs moves them to NHWC, where its broadcast over 3 channels is slow
        # (the whole model ran in 140 us instead of 50 us).
        x = node("Transpose", ["input"], "pre_nchw", perm=[0, 3, 1, 2])
        x = node("Cast", [x], "pre_float", to=TensorProto.FLOAT)
        x = node("Mul", [x, ("pre_scale", np.float32(1 / 255))], "pre_unit")
        bn = [("pre_one", np.ones(3, np.float32)), ("pre_zero", np.zeros(3, np.float32))]
        bn += [("pre_mean", IMAGENET_MEAN), ("pre_var", IMAGENET_STD**2)]
        x = node("BatchNormalization", [x, *bn], "pre_normalized", epsilon=0.0)
    else:
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])
        x = "input"
    i = 0
    while f"conv{i}_w" in weights:
        s = weights[f"conv{i}_stride"]
        w, b = (f"conv{i}.weight", weights[f"conv{i}_w"]), (f"conv{i}.bias", weights[f"conv{i}_b"])
        x = node("Conv", [x, w, b], f"conv{i}", kernel_shape=[3, 3], strides=[s, s], pads=[1, 1, 1, 1])
        x = node("Relu", [x], f"relu{i}")
        i += 1
    x = node("GlobalAveragePool", [x], "gap")
    x = node("Flatten", [x], "flatten", axis=1)
    node("Gemm", [x, ("fc.weight", weights["fc_w"]), ("fc.bias", weights["fc_b"])], "logits", transB=1)
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, NUM_CLASSES])
    graph = helper.make_graph(nodes, name, [inp], [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def build_float(path, uint8_nhwc: bool = False) -> None:
    """The small float classifier (float32 NCHW input, or uint8 NHWC with in-graph preprocessing)."""
    name = "classifier_uint8_nhwc" if uint8_nhwc else "classifier"
    _save_onnx(_classifier_graph(small_weights(), SMALL_SIZE, "N", uint8_nhwc, name), path)


def build_larger_float(path) -> None:
    """The benchmark classifier: float32 [batch,3,224,224]."""
    _save_onnx(_classifier_graph(large_weights(), LARGE_SIZE, "batch", False, "larger_classifier"), path)


# ----------------------------------------------------------------------------------------------------------
# ONNX: quantization
# ----------------------------------------------------------------------------------------------------------


class ImageReader(ortq.CalibrationDataReader):
    """Feeds seeded synthetic images one by one, in the layout and dtype the model's input wants."""

    def __init__(self, model_path, n: int = N_CALIB, seed: int = CALIB_SEED):
        inp = onnx.load(os.fspath(model_path)).graph.input[0]
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if inp.type.tensor_type.elem_type == TensorProto.UINT8:
            batches = calibration_images(n, seed, dims[1])
        else:
            batches = normalize_nchw(calibration_images(n, seed, dims[2]))
        self._feeds = iter([{inp.name: b[None]} for b in batches])

    def get_next(self):
        return next(self._feeds, None)


@contextlib.contextmanager
def _no_preprocess_advice():
    """quantize_static logs 'Please consider to run pre-processing before quantization' (shape inference
    and graph optimization) on the root logger; our graphs are already clean and fully shaped."""

    def drop(record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _finish_quantized(out) -> None:
    """quantize_* stamp the tool's name/version and may raise the IR version: pin them again."""
    _save_onnx(onnx.load(os.fspath(out)), out)


def _static_options(float_path) -> dict:
    """Options shared by the static quantizers.

    The in-graph preprocessing (nodes named pre_*) stays float, and the network's normalized input gets the
    full range a normalized [0, 1] pixel can have (NORM_RANGE) instead of the calibration images' range, so
    that no real image is clipped at the input (the TFLite model does the same). The final Gemm runs on
    quantized inputs and weights but its output (the logits) stays float: re-quantizing the logits to 8 bits
    only adds error, and it was the largest single source of it (worst-case cosine 0.985 instead of 0.995
    on a 5-conv version of larger_int8).
    """
    graph = onnx.load(os.fspath(float_path)).graph
    first_conv = next(n for n in graph.node if n.op_type == "Conv")
    lo, hi = np.float32(NORM_RANGE[0]), np.float32(NORM_RANGE[1])
    overrides = {first_conv.input[0]: [{"rmin": lo, "rmax": hi}]}
    return {
        "nodes_to_exclude": [n.name for n in graph.node if n.name.startswith("pre_")],
        "extra_options": {"TensorQuantOverrides": overrides, "OpTypesToExcludeOutputQuantization": ["Gemm"]},
    }


def _quantize_static(float_path, out, quant_format, per_channel: bool, n: int, seed: int) -> None:
    with _no_preprocess_advice():
        ortq.quantize_static(
            os.fspath(float_path),
            os.fspath(out),
            ImageReader(float_path, n, seed),
            quant_format=quant_format,
            per_channel=per_channel,
            activation_type=ortq.QuantType.QUInt8,
            weight_type=ortq.QuantType.QInt8,
            calibrate_method=ortq.CalibrationMethod.MinMax,
            **_static_options(float_path),
        )
    _finish_quantized(out)


def quantize_qdq(float_path, out, per_channel: bool = True, n: int = N_CALIB, seed: int = CALIB_SEED) -> None:
    """Static QDQ quantization: uint8 activations, int8 weights (per output channel by default), MinMax.

    Per-channel because the rescaled conv filters differ in magnitude per output channel; it is also what
    the TFLite model does, and onnxruntime runs it about as fast as per-tensor.
    """
    _quantize_static(float_path, out, ortq.QuantFormat.QDQ, per_channel, n, seed)


def quantize_qoperator(float_path, out, n: int = N_CALIB, seed: int = CALIB_SEED) -> None:
    """Static quantization in QOperator format (QLinearConv, QGemm, ...), uint8 activations, int8 weights."""
    _quantize_static(float_path, out, ortq.QuantFormat.QOperator, False, n, seed)


def quantize_dynamic(float_path, out) -> None:
    """Dynamic quantization of the MatMul/Gemm part (int8 weights, activations quantized at run time)."""
    ortq.quantize_dynamic(
        os.fspath(float_path),
        os.fspath(out),
        op_types_to_quantize=["MatMul", "Gemm"],
        weight_type=ortq.QuantType.QInt8,
    )
    _finish_quantized(out)


# ----------------------------------------------------------------------------------------------------------
# TFLite: full-integer int8 model written with flatbuffers
# ----------------------------------------------------------------------------------------------------------

# Operator versions as the TFLite converter sets them for int8 tensors (tensorflow/lite/tools/versioning).
_OP_VERSIONS = {"PAD": 2, "CONV_2D": 3, "MEAN": 2, "FULLY_CONNECTED": 4}


def _obj(cls, **attrs):
    """Instantiate a flatbuffers object-API class and set its fields (works with older generated code)."""
    obj = cls()
    for key, value in attrs.items():
        setattr(obj, key, value)
    return obj


class _AlignedBufferT(tfl.BufferT):
    """A Buffer whose bytes start 16-byte aligned in the file, as the TFLite converter writes them."""

    def Pack(self, builder):
        data = None
        if self.data is not None:
            payload = bytes(self.data)
            builder.StartVector(1, len(payload), 16)
            builder.head -= len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            data = builder.EndVector()
        tfl.BufferStart(builder)
        if data is not None:
            tfl.BufferAddData(builder, data)
        return tfl.BufferEnd(builder)


def int8_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 scale/zero point for a real range (widened to contain 0); scale rounded to float32."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = float(np.float32((hi - lo) / 255.0))
    return scale, int(np.clip(np.round(-128.0 - lo / scale), -128, 127))


def _symmetric_int8(w: np.ndarray, axis: int | None):
    """int8 weights with zero point 0 and per-channel (axis=0) or per-tensor scales (float32-rounded)."""
    flat = w.reshape(w.shape[0], -1) if axis == 0 else w.reshape(1, -1)
    scale = (np.maximum(np.abs(flat).max(axis=1), 1e-8) / 127.0).astype(np.float32)
    q = np.clip(np.round(flat / scale[:, None].astype(np.float64)), -127, 127).astype(np.int8)
    return q.reshape(w.shape), scale


class _TFLiteGraph:
    """Collects tensors, buffers and operators of one subgraph, then packs the model with the object API."""

    def __init__(self):
        self.tensors, self.ops, self.opcodes = [], [], []
        self.buffers = [_AlignedBufferT()]  # buffer 0: the empty buffer of all non-constant tensors

    def tensor(self, name: str, shape, ttype: int, data=None, quant=None) -> int:
        """Add a tensor; ``data`` makes it a constant, ``quant`` is (scales, zero points)."""
        t = _obj(tfl.TensorT, name=name, shape=list(shape), type=ttype, buffer=0)
        if data is not None:
            self.buffers.append(_obj(_AlignedBufferT, data=np.ascontiguousarray(data).tobytes()))
            t.buffer = len(self.buffers) - 1
        if quant is not None:
            scales = [float(s) for s in np.atleast_1d(quant[0])]
            zps = [int(z) for z in np.broadcast_to(quant[1], len(scales))]
            t.quantization = _obj(tfl.QuantizationParametersT, scale=scales, zeroPoint=zps)
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, name: str, inputs: list, output: int, options=None) -> int:
        key = (getattr(tfl.BuiltinOperator, name), _OP_VERSIONS[name])
        if key not in self.opcodes:
            self.opcodes.append(key)
        options_type = getattr(tfl.BuiltinOptions, type(options).__name__[:-1]) if options else 0
        op = _obj(tfl.OperatorT, opcodeIndex=self.opcodes.index(key), inputs=inputs, outputs=[output])
        op.builtinOptionsType, op.builtinOptions = options_type, options
        self.ops.append(op)
        return output

    def serialize(self, inputs: list, outputs: list, description: str) -> bytes:
        maps = [
            [_obj(tfl.TensorMapT, name=self.tensors[i].name, tensorIndex=i) for i in ids]
            for ids in (inputs, outputs)
        ]
        signature = _obj(tfl.SignatureDefT, signatureKey="serving_default", inputs=maps[0], outputs=maps[1])
        subgraph = _obj(
            tfl.SubGraphT, tensors=self.tensors, inputs=inputs, outputs=outputs, operators=self.ops
        )
        subgraph.name = "main"
        codes = [
            _obj(tfl.OperatorCodeT, deprecatedBuiltinCode=min(c, 127), builtinCode=c, version=v)
            for c, v in self.opcodes
        ]
        model = _obj(tfl.ModelT, version=3, operatorCodes=codes, subgraphs=[subgraph], buffers=self.buffers)
        model.description, model.signatureDefs = description, [signature]
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def tflite_activation_ranges(weights: dict, n: int = N_CALIB, seed: int = CALIB_SEED) -> dict:
    """Real-valued (min, max) of each activation over the calibration images (input: NORM_RANGE)."""
    acts = forward(weights, normalize_nchw(calibration_images(n, seed)))
    ranges = {k: (float(v.min()), float(v.max())) for k, v in acts.items()}
    ranges["input"] = NORM_RANGE
    return ranges


def build_tflite(path) -> None:
    """classifier_int8.tflite: the small network, full-integer int8, NHWC, batch 1.

    Per-channel int8 conv filters (OHWI), per-tensor int8 FC weights ([out, in]), int32 biases with scale
    input_scale * weight_scale, asymmetric int8 activations from tflite_activation_ranges(). PAD(1) + VALID
    convolution reproduces ONNX's pads=[1,1,1,1] exactly (TFLite's SAME padding pads only bottom/right for
    stride 2); PAD fills with the zero point, i.e. with real 0 like ONNX.
    """
    weights, size = small_weights(), SMALL_SIZE
    ranges = tflite_activation_ranges(weights)
    g, I8, I32 = _TFLiteGraph(), tfl.TensorType.INT8, tfl.TensorType.INT32

    def bias(name: str, values: np.ndarray, scale) -> int:
        return g.tensor(
            name, [len(values)], I32, data=np.round(values / scale).astype(np.int32), quant=(scale, 0)
        )

    quant = int8_qparams(*ranges["input"])
    x = g.tensor("input", [1, size, size, 3], I8, quant=quant)
    paddings = g.tensor("paddings", [4, 2], I32, data=np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))
    hw, i = size, 0
    while f"conv{i}_w" in weights:
        w, b, stride = weights[f"conv{i}_w"], weights[f"conv{i}_b"], weights[f"conv{i}_stride"]
        cout, cin = w.shape[:2]
        padded = g.tensor(f"conv{i}_padded", [1, hw + 2, hw + 2, cin], I8, quant=quant)
        x = g.op("PAD", [x, paddings], padded, tfl.PadOptionsT())
        qw, w_scale = _symmetric_int8(w.transpose(0, 2, 3, 1), axis=0)  # OIHW -> OHWI
        wt = g.tensor(f"conv{i}_weight", qw.shape, I8, data=qw, quant=(w_scale, 0))
        bt = bias(f"conv{i}_bias", b, w_scale.astype(np.float64) * quant[0])
        hw, quant = (hw + 2 - 3) // stride + 1, int8_qparams(*ranges[f"conv{i}"])
        out = g.tensor(f"conv{i}_relu", [1, hw, hw, cout], I8, quant=quant)
        opts = _obj(tfl.Conv2DOptionsT, padding=tfl.Padding.VALID, strideW=stride, strideH=stride)
        opts.fusedActivationFunction = tfl.ActivationFunctionType.RELU
        x = g.op("CONV_2D", [x, wt, bt], out, opts)
        i += 1
    axes = g.tensor("mean_axes", [2], I32, data=np.array([1, 2], np.int32))
    quant = int8_qparams(*ranges["gap"])
    gap = g.tensor("gap", [1, cout], I8, quant=quant)
    x = g.op("MEAN", [x, axes], gap, _obj(tfl.ReducerOptionsT, keepDims=False))
    qw, w_scale = _symmetric_int8(weights["fc_w"], axis=None)
    wt = g.tensor("fc_weight", qw.shape, I8, data=qw, quant=(w_scale, 0))
    bt = bias("fc_bias", weights["fc_b"], float(w_scale[0]) * quant[0])
    logits = g.tensor("logits", [1, NUM_CLASSES], I8, quant=int8_qparams(*ranges["logits"]))
    g.op("FULLY_CONNECTED", [x, wt, bt], logits, tfl.FullyConnectedOptionsT())
    data = g.serialize([0], [logits], "inferd example classifier, seeded random weights (make_models.py)")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)


# ----------------------------------------------------------------------------------------------------------
# Everything
# ----------------------------------------------------------------------------------------------------------

MODEL_FILES = [
    "classifier_float.onnx",
    "classifier_int8.onnx",
    "classifier_uint8_nhwc.onnx",
    "classifier_int8.tflite",
    "labels.txt",
    "larger_float.onnx",
    "larger_int8.onnx",
]


def build_all(out) -> list[Path]:
    """Write every file of MODEL_FILES into directory ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    build_float(out / "classifier_float.onnx")
    quantize_qdq(out / "classifier_float.onnx", out / "classifier_int8.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        build_float(Path(tmp) / "uint8_float.onnx", uint8_nhwc=True)
        quantize_qdq(Path(tmp) / "uint8_float.onnx", out / "classifier_uint8_nhwc.onnx")
    build_tflite(out / "classifier_int8.tflite")
    (out / "labels.txt").write_text("".join(f"{name}\n" for name in LABELS))
    build_larger_float(out / "larger_float.onnx")
    quantize_qdq(out / "larger_float.onnx", out / "larger_int8.onnx", n=N_CALIB_LARGE)
    return [out / name for name in MODEL_FILES]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent / "models"),
        help="output directory (default: examples/models)",
    )
    args = parser.parse_args(argv)
    for path in build_all(args.out):
        print(f"{path}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()

"""The ONNX graph of a checkpoint: raw columns in, predictions in the targets' units out.

Written node by node with `onnx.helper` rather than traced with `torch.onnx.export`:
the preprocessing takes string columns, which no torch tensor can carry, so a traced
network would need the same hand-written nodes around it anyway, and the networks are
only Linear layers, element-wise activations and TabM's k members side by side (MatMul and
Einsum on [batch, k, features], then their mean). It also keeps the export independent
of which torch exporter is the default (TorchScript or dynamo with onnxscript), which
changed across the torch releases we support.

Only long-standing operators are used (opset 17 and `ai.onnx.ml` LabelEncoder-2, no
string Equal, which needs opset 19 and a recent onnxruntime), and the file is written as
IR version 8, so that older runtimes load it too.

`onnx` is imported inside the functions: `mse-train --help` and the other commands never
load it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from mse_train.data.csvscan import MISSING_VALUES
from mse_train.data.preprocess import MISSING_CATEGORY, Preprocessor
from mse_train.errors import CheckpointError, UserError
from mse_train.models import blocks, networks
from mse_train.use import onnx_embeddings
from mse_train.use.onnx_nodes import Graph, array

if TYPE_CHECKING:
    import onnx

OPSET = 17
ML_OPSET = 2  # LabelEncoder-2: string keys to int64 values with a default
IR_VERSION = 8  # what onnx 1.10+ and onnxruntime 1.10+ read; opset 17 needs no more
OUTPUT = "prediction"
UNKNOWN, EMPTY = -1, -2  # LabelEncoder codes of an unseen category and of an empty cell


def input_types(pre: Preprocessor) -> dict[str, str]:
    """Each graph input (a feature column, by name, in `pre.features` order) and its type."""
    categorical = set(pre.categorical_names)
    return {name: "string" if name in categorical else "float32" for name in pre.features}


def build(pre: Preprocessor, model: nn.Module, version: str) -> onnx.ModelProto:
    """The whole graph: fill, standardise, one-hot (or embed), the network, back to target units.

    A row the policies would refuse (an empty cell under `missing: error` or `drop`, an
    unseen category under `unknown_category: error`) cannot raise inside a graph: its
    prediction is NaN instead.
    """
    import onnx
    from onnx import TensorProto

    if OUTPUT in pre.features:
        raise UserError(
            f"a feature column is named `{OUTPUT}`, the name of the graph's output",
            ["rename the column and train again to export this model"],
        )
    g = Graph()
    h = g.helper
    inputs = []
    for name, kind in input_types(pre).items():
        dtype = TensorProto.STRING if kind == "string" else TensorProto.FLOAT
        inputs.append(h.make_tensor_value_info(name, dtype, ["batch", 1]))
    members = list(model.members) if isinstance(model, networks.WeightedMean) else [model]
    for member in members:  # refused before any node is written
        if isinstance(member, blocks.Embedded):
            _exportable(member)
    refused: list[str] = []  # float [batch, 1] per check: 1 where the row cannot be predicted
    numbers = _numeric(g, pre, refused) if pre.numeric else None
    positions = [_position(g, pre, col.name, col.categories, refused) for col in pre.categorical]
    outputs = [_member(g, pre, member, numbers, positions) for member in members]
    if isinstance(model, networks.WeightedMean):  # an ensemble: the weighted mean of its members
        weighted = [
            g.op("Mul", out, g.const("weight", np.array(w, np.float32)))
            for out, w in zip(outputs, model.weights, strict=True)
        ]
        y = weighted[0] if len(weighted) == 1 else g.op("Sum", *weighted)
    else:
        y = outputs[0]
    # Back to target units in float64, as predict does, then float32 for the output.
    y = g.op("Cast", y, to=TensorProto.DOUBLE)
    y = g.op("Mul", y, g.const("target_std", np.array([[t.std for t in pre.targets]], np.float64)))
    y = g.op("Add", y, g.const("target_mean", np.array([[t.mean for t in pre.targets]], np.float64)))
    y = g.op("Cast", y, to=TensorProto.FLOAT)
    if refused:
        count = refused[0] if len(refused) == 1 else g.op("Concat", *refused, axis=1)
        count = g.op("ReduceSum", count, g.const("axis", np.array([1], np.int64)), keepdims=1)
        bad = g.op("Greater", count, g.const("zero", np.array(0.0, np.float32)))
        y = g.op("Where", bad, g.const("nan", np.array(np.nan, np.float32)), y)
    g.nodes.append(h.make_node("Identity", [y], [OUTPUT]))
    output = h.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", len(pre.targets)])
    graph = h.make_graph(g.nodes, "mse_train", inputs, [output], g.constants)
    proto: onnx.ModelProto = h.make_model(
        graph,
        opset_imports=[h.make_opsetid("", OPSET), h.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="mse-train",
        producer_version=version,
        doc_string="mse-train regression model: one input per feature column, output `prediction`.",
    )
    proto.ir_version = IR_VERSION
    h.set_model_props(
        proto,
        {
            "mse_train_version": version,
            "inputs": json.dumps(input_types(pre)),
            "targets": json.dumps(pre.target_names),
            "missing": pre.missing,
            "unknown_category": pre.unknown_category,
            "empty_strings": json.dumps(list(MISSING_VALUES)),
        },
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _member(g: Graph, pre: Preprocessor, model: nn.Module, numbers: str | None, positions: list[str]) -> str:
    """One model's output (scaled target units) from the standardised numbers and category positions."""
    embedded = model if isinstance(model, blocks.Embedded) else None
    network = _exportable(embedded) if embedded is not None else model
    parts = []
    if numbers is not None:
        if embedded is not None and embedded.embedding is not None:
            numbers = onnx_embeddings.numeric(g, embedded.embedding, numbers)
        parts.append(numbers)
    if embedded is not None and embedded.categorical is not None:
        parts.append(onnx_embeddings.categorical(g, embedded.categorical, positions))
    else:
        for col, position in zip(pre.categorical, positions, strict=True):
            parts.append(_one_hot(g, position, len(col.categories)))
    x = parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=1)
    return _network(g, network, x)


def _numeric(g: Graph, pre: Preprocessor, refused: list[str]) -> str:
    """[batch, numeric] float32: empty cells filled (or flagged), then standardised."""
    x = (
        g.op("Concat", *(c.name for c in pre.numeric), axis=1)
        if len(pre.numeric) > 1
        else pre.numeric[0].name
    )
    empty = g.op("IsNaN", x)
    fill, mean, std = pre.numeric_constants()  # the transform's own float32 constants
    if pre.missing in ("mean", "median"):
        x = g.op("Where", empty, g.const("fill", fill[None, :]), x)
    else:  # error / drop: predict refuses or skips the row
        empties = g.op("Cast", empty, to=1)  # FLOAT
        refused.append(g.op("ReduceSum", empties, g.const("axis", np.array([1], np.int64)), keepdims=1))
    # the same two operations as data/preprocess.py's Encoder
    x = g.op("Sub", x, g.const("mean", mean[None, :]))
    return g.op("Div", x, g.const("std", std[None, :]))


def _position(g: Graph, pre: Preprocessor, name: str, categories: list[str], refused: list[str]) -> str:
    """[batch, 1] int64: the cell's place in `categories`, UNKNOWN for an unseen one; an
    empty cell is the `(missing)` category when missing cells are filled, else refused."""
    fills = pre.missing in ("mean", "median")
    codes = {cat: i for i, cat in enumerate(categories)}
    for text in MISSING_VALUES:  # the spellings of an empty cell, as the CSV reader takes them
        if text not in codes:
            codes[text] = codes[MISSING_CATEGORY] if fills else EMPTY
    code = g.op(
        "LabelEncoder",
        name,
        domain="ai.onnx.ml",
        keys_strings=list(codes),
        values_int64s=list(codes.values()),
        default_int64=UNKNOWN,
    )
    if not fills:
        refused.append(_flag(g, code, EMPTY))
    if pre.unknown_category == "error":
        refused.append(_flag(g, code, UNKNOWN))
    return code


def _one_hot(g: Graph, position: str, count: int) -> str:
    """[batch, count] float32: 1 at the cell's category, all zeros for an unseen one."""
    positions = g.const("positions", np.arange(count, dtype=np.int64)[None, :])
    return g.op("Cast", g.op("Equal", position, positions), to=1)  # FLOAT


def _flag(g: Graph, code: str, value: int) -> str:
    return g.op("Cast", g.op("Equal", code, g.const("code", np.array(value, np.int64))), to=1)


def _linear(g: Graph, layer: nn.Module, x: str) -> str:
    assert isinstance(layer, nn.Linear)
    weight = g.const("weight", array(layer.weight))
    bias = g.const("bias", array(layer.bias))
    return g.op("Gemm", x, weight, bias, transB=1)  # x Wᵀ + b, as nn.Linear


def _gelu(g: Graph, layer: nn.Module, x: str) -> str:
    # nn.GELU() is the exact erf form; the Gelu operator needs opset 20.
    assert isinstance(layer, nn.GELU) and layer.approximate == "none"
    erf = g.op("Erf", g.op("Div", x, g.const("sqrt2", np.array(math.sqrt(2.0), np.float32))))
    one_plus = g.op("Add", erf, g.const("one", np.array(1.0, np.float32)))
    return g.op("Mul", g.op("Mul", x, one_plus), g.const("half", np.array(0.5, np.float32)))


def _leaky_relu(g: Graph, layer: nn.Module, x: str) -> str:
    assert isinstance(layer, nn.LeakyReLU)
    return g.op("LeakyRelu", x, alpha=float(layer.negative_slope))


def _elu(g: Graph, layer: nn.Module, x: str) -> str:
    assert isinstance(layer, nn.ELU)
    return g.op("Elu", x, alpha=float(layer.alpha))


def _tabm(g: Graph, model: nn.Module, x: str) -> str:
    """[batch, in] -> [batch, out]: each member's view of the row, the backbone and heads on
    [batch, k, ...], then the members' mean, as blocks.TabM does in eval mode."""
    assert isinstance(model, blocks.TabM)
    z = g.op("Unsqueeze", x, g.const("axes", np.array([1], np.int64)))  # [batch, 1, in]
    z = g.op("Mul", z, g.const("start", array(model.start)))  # [batch, k, in]
    z = _network(g, model.backbone, z)
    z = _member_heads(g, model.head, z)  # [batch, k, out], reached only here
    return g.op("ReduceMean", z, axes=[1], keepdims=0)  # opset 17: axes is an attribute


def _ensemble_linear(g: Graph, layer: nn.Module, x: str) -> str:
    """[batch, k, in] -> [batch, k, out]: ((x * r) Wᵀ) * s + b, as blocks.EnsembleLinear."""
    assert isinstance(layer, blocks.EnsembleLinear)
    if layer.r is not None:
        x = g.op("Mul", x, g.const("r", array(layer.r)))
    x = g.op("MatMul", x, g.const("weight_t", array(layer.weight.T)))  # shared by the members
    if layer.s is not None:
        x = g.op("Mul", x, g.const("s", array(layer.s)))
    return g.op("Add", x, g.const("bias", array(layer.bias)))


def _member_heads(g: Graph, layer: nn.Module, x: str) -> str:
    """[batch, k, in] -> [batch, k, out]: member i's own linear head, as blocks.MemberHeads."""
    assert isinstance(layer, blocks.MemberHeads)
    x = g.op("Einsum", x, g.const("weight", array(layer.weight)), equation="bki,koi->bko")
    return g.op("Add", x, g.const("bias", array(layer.bias)))


# Each layer type models/networks.py builds -> its nodes (tied to ACTIVATIONS by a test).
# Activations and dropout apply to [batch, features] and to TabM's [batch, k, features] alike.
LAYERS: dict[type[nn.Module], Callable[[Graph, nn.Module, str], str]] = {
    nn.Linear: _linear,
    nn.ReLU: lambda g, _, x: g.op("Relu", x),
    nn.Tanh: lambda g, _, x: g.op("Tanh", x),
    nn.Sigmoid: lambda g, _, x: g.op("Sigmoid", x),
    nn.GELU: _gelu,
    nn.LeakyReLU: _leaky_relu,
    nn.ELU: _elu,
    nn.Dropout: lambda g, _, x: x,  # identity at inference
    blocks.TabM: _tabm,
    blocks.EnsembleLinear: _ensemble_linear,
    blocks.MemberHeads: _member_heads,  # the packed sharing mode's layers
}


def _exportable(model: blocks.Embedded) -> nn.Module:
    """The network behind `model`'s embeddings, when export can write all of it."""
    network = model.network
    layers = list(network) if isinstance(network, nn.Sequential) else [network]
    known_embedding = model.embedding is None or isinstance(model.embedding, onnx_embeddings.EXPORTABLE)
    if not known_embedding or not all(type(layer) in LAYERS for layer in layers):
        raise UserError(
            f"{model.kind} cannot be exported to ONNX yet: export writes linear models, MLPs "
            "and TabM (with their numeric and categorical embeddings) only",
            [
                "export a model trained with model.type linear, mlp or tabm; "
                "`mse-train predict` serves this one"
            ],
        )
    return network


def _network(g: Graph, model: nn.Module, x: str) -> str:
    layers = list(model) if isinstance(model, nn.Sequential) else [model]
    for layer in layers:
        write = LAYERS.get(type(layer))
        if write is None:
            raise CheckpointError(
                f"the model holds a {type(layer).__name__} layer, which export cannot write",
                [f"export knows: {', '.join(t.__name__ for t in LAYERS)}"],
            )
        x = write(g, layer, x)
    return x

"""ONNX nodes for the embeddings (models/embeddings.py, models/categorical.py), so that an MLP
or a linear model behind them exports as a plain one does (onnx_graph.py writes the rest).

Each writer repeats its module's forward pass with opset-17 operators, in float32 and in the
same order of operations: piecewise-linear (Mul, Add, Max/Min against per-slot bounds,
Einsum), periodic (Mul, Cos, Sin, Einsum or MatMul, Relu) and categorical tables (Gather).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mse_train.models.categorical import CategoricalEmbeddings
from mse_train.models.embeddings import PeriodicEmbedding, PiecewiseLinearEmbedding
from mse_train.use.onnx_nodes import Graph, array

EXPORTABLE = (PiecewiseLinearEmbedding, PeriodicEmbedding)  # numeric embeddings `numeric` writes


def numeric(g: Graph, embedding: nn.Module, x: str) -> str:
    """[batch, features] standardised -> [batch, features * size], for a module in EXPORTABLE."""
    if isinstance(embedding, PiecewiseLinearEmbedding):
        return _piecewise(g, embedding, x)
    assert isinstance(embedding, PeriodicEmbedding), type(embedding)
    return _periodic(g, embedding, x)


def _per_feature(g: Graph, x: str) -> str:
    return g.op("Unsqueeze", x, g.const("axes", np.array([2], np.int64)))  # [batch, features, 1]


def _piecewise(g: Graph, emb: PiecewiseLinearEmbedding, x: str) -> str:
    x3 = _per_feature(g, x)
    z = g.op("Add", g.op("Mul", x3, g.const("scale", array(emb.scale))), g.const("shift", array(emb.shift)))
    # The module's clamps as bounds per slot: the first bin is open below, the middle ones
    # are [0, 1], the last is open above (and below too for a feature with a single bin).
    lower = np.zeros(emb.scale.shape, np.float32)
    upper = np.ones(emb.scale.shape, np.float32)
    lower[:, 0] = -np.inf
    lower[:, -1] = np.where(array(emb.single)[:, 0] > 0, -np.inf, 0.0)
    upper[:, -1] = np.inf
    z = g.op("Min", g.op("Max", z, g.const("lower", lower)), g.const("upper", upper))
    encoded = g.op("Einsum", z, g.const("weight", array(emb.weight)), equation="bfi,fio->bfo")
    linear = g.op(
        "Add",
        g.op("Mul", x3, g.const("linear_weight", array(emb.linear_weight))),
        g.const("linear_bias", array(emb.linear_bias)),
    )
    return g.op("Flatten", g.op("Add", linear, encoded), axis=1)


def _periodic(g: Graph, emb: PeriodicEmbedding, x: str) -> str:
    with torch.no_grad():
        frequency = array(2 * math.pi * emb.frequency)  # as the module computes it, in float32
    v = g.op("Mul", g.const("frequency", frequency), _per_feature(g, x))
    z = g.op("Concat", g.op("Cos", v), g.op("Sin", v), axis=-1)
    weight = g.const("weight", array(emb.weight))
    if emb.weight.dim() == 2:  # lite: one matrix for every feature
        z = g.op("MatMul", z, weight)
    else:
        z = g.op("Einsum", z, weight, equation="bfi,fio->bfo")
    return g.op("Flatten", g.op("Relu", g.op("Add", z, g.const("bias", array(emb.bias)))), axis=1)


def categorical(g: Graph, tables: nn.Module, positions: list[str]) -> str:
    """Each column's LabelEncoder position (-1 unseen, -2 empty) -> its table's row, side by side.

    Code = position + 1, as the preprocessing writes it, and an unseen category reads the
    reserved zero row 0; an empty cell the row refuses is sent there too (its prediction
    is NaN either way).
    """
    assert isinstance(tables, CategoricalEmbeddings)
    parts = []
    one = g.const("one", np.array(1, np.int64))
    zero = g.const("zero", np.array(0, np.int64))
    for table, position in zip(tables.tables, positions, strict=True):
        assert isinstance(table, nn.Embedding)
        code = g.op("Max", g.op("Add", position, one), zero)  # [batch, 1]
        rows = g.op("Gather", g.const("table", array(table.weight)), code, axis=0)  # [batch, 1, width]
        parts.append(g.op("Flatten", rows, axis=1))
    return parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=1)

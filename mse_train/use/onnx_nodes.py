"""The ONNX graph being written: nodes and constants, each output given a fresh name.

What onnx_graph.py (preprocessing, network, units) and onnx_embeddings.py (the embeddings'
nodes) both write into; it imports neither, so neither imports the other back.
`onnx` is imported when a graph is started, never at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx
    import torch


def array(t: torch.Tensor) -> np.ndarray:
    """A parameter or buffer as a float32 constant's value."""
    return t.detach().cpu().numpy().astype(np.float32)


class Graph:
    """Nodes and constants being collected, each output given a fresh name."""

    def __init__(self) -> None:
        import onnx.helper

        self.helper = onnx.helper
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"mse_train/{hint}_{self._count}"  # a prefix no column name is likely to have

    def const(self, hint: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.constants.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, *inputs: str, domain: str = "", **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], domain=domain, **attrs))
        return out

"""Floating-point work per image, counted from an ONNX graph (needs the ``onnx`` package).

Counted: ``Conv``, ``ConvTranspose``, ``MatMul`` and ``Gemm`` — 2 operations per multiply-add —
which is where a conv net spends its time; element-wise ops, pooling, resize and the cosine/blur
tail are a rounding error next to them and are not counted. An int8 (QDQ) graph has the same
convolutions, so it counts the same operations: its GFLOP/s is "operations per second".
Shapes come from ONNX shape inference with the batch dimension fixed to 1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _dims(value_info: Any) -> list[int] | None:
    shape = value_info.type.tensor_type.shape
    dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
    return None if any(d is None for d in dims) else dims  # type: ignore[return-value]


def _attr(node: Any, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def graph_gflop(path: Path | str, batch: int = 1) -> float:
    """GFLOP for one forward pass of ``batch`` images, divided by ``batch`` (i.e. per image)."""
    import onnx

    model = onnx.load(str(path))
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int] | None] = {}
    for info in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        shapes[info.name] = _dims(info)
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0.0
    for node in model.graph.node:
        total += _node_flops(node, shapes)
    return total / batch / 1e9


def _node_flops(node: Any, shapes: dict[str, list[int] | None]) -> float:
    def shape(i: int) -> list[int] | None:
        return shapes.get(node.input[i]) if len(node.input) > i else None

    out = shapes.get(node.output[0]) if node.output else None
    if node.op_type == "Conv":
        weight = shape(1)
        if weight is None or out is None:
            return 0.0
        # weight (Cout, Cin/groups, kh, kw); every output element costs Cin/groups·kh·kw MACs.
        return 2.0 * math.prod(out) * math.prod(weight[1:])
    if node.op_type == "ConvTranspose":
        data, weight = shape(0), shape(1)
        if data is None or weight is None:
            return 0.0
        # weight (Cin, Cout/groups, kh, kw); every input element is scattered over Cout/g·kh·kw.
        return 2.0 * math.prod(data) * math.prod(weight[1:])
    if node.op_type in ("MatMul", "Gemm"):
        a, b = shape(0), shape(1)
        if a is None or b is None or out is None:
            return 0.0
        inner = a[-1] if not (node.op_type == "Gemm" and _attr(node, "transA", 0)) else a[0]
        return 2.0 * math.prod(out) * inner
    return 0.0

"""Export a checkpoint to one ONNX graph with its metadata inside, after a parity check.

Graph: input ``images`` uint8 ``(B, S, S, 3)`` RGB (dynamic batch; cast, normalisation and layout
change in-graph) → ``anomaly_map`` float32 ``(B, S, S)`` (smoothed) and ``score`` float32 ``(B,)``.

Parity: the same real-looking images (the run's held-out good images when still on disk, else
built-in synthetic parts) go through torch and ONNX Runtime; the file is written only if
``max |torch − ort|`` over maps and scores is within tolerance:

* fp32: :data:`FP32_ATOL` = 1e-3 (maps are sums of three cosine distances, O(0.1–3); observed
  differences are ~1e-6, the margin absorbs kernel-choice noise across CPUs);
* fp16: :data:`FP16_ATOL` = 5e-2 (half precision keeps ~3 significant digits through ~60 layers;
  checked against the fp32 torch model, which is what fp16 must approximate);
* int8: the fp32 graph passes the fp32 check first, then is quantised (:mod:`.quantize`) and the
  int8 graph is compared with it by score rank correlation and relative map error.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from rdad import __version__
from rdad.atomic import write_atomically
from rdad.cuda_libraries import preload_for_onnxruntime
from rdad.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ModelMetadata

from .checkpoint import TrainConfig, checkpoint_calibration, load_model, predict
from .data import parity_images
from .network import ReverseDistillation
from .quantize import DEFAULT_CALIBRATION_COUNT, plan_int8, write_int8
from .tiles import config_tiling

log = logging.getLogger(__name__)

FP32_ATOL = 1e-3
FP16_ATOL = 5e-2
PRECISIONS = ("fp32", "fp16", "int8")
OPSET = 17


class ExportError(RuntimeError):
    """Export refused (parity failure, bad precision); the message gives the numbers."""


class _GraphModule(nn.Module):
    """Eval-mode network with plain tuple outputs in float32, whatever the inner precision."""

    def __init__(self, net: ReverseDistillation) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        anomaly_map, score = self.net(images)
        return anomaly_map.float(), score.float()


def tensor_types(proto: onnx.ModelProto) -> dict[str, int]:
    """``{tensor name: onnx.TensorProto element type}`` after shape inference."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*graph.value_info, *graph.input, *graph.output]
    }
    types.update({init.name: init.data_type for init in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def map_tail_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The anomaly-map tail: every node downstream of the first cast of fp16 features to fp32.

    Empty for an fp32 graph (no such cast).
    """
    types = tensor_types(proto)
    nodes = list(proto.graph.node)
    frontier: set[str] = set()
    for node in nodes:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        is_upcast = node.op_type == "Cast" and to == onnx.TensorProto.FLOAT
        if is_upcast and types.get(node.input[0]) == onnx.TensorProto.FLOAT16:
            frontier.update(node.output)
    tail: list[onnx.NodeProto] = []
    for node in nodes:  # ONNX nodes are topologically sorted
        if any(name in frontier for name in node.input):
            tail.append(node)
            frontier.update(node.output)
    return tail


def map_tail_problems(proto: onnx.ModelProto) -> list[str]:
    """``op name: type`` of every non-fp32 float tensor in the map tail (empty = all fp32)."""
    types = tensor_types(proto)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    tail = map_tail_nodes(proto)
    if not tail:
        return ["no fp16→fp32 cast found before the anomaly map"]
    problems = []
    for node in tail:
        for name in [*node.input, *node.output]:
            kind = types.get(name)
            if kind in floats and kind != onnx.TensorProto.FLOAT:
                problems.append(
                    f"{node.op_type} {node.name}: {onnx.TensorProto.DataType.Name(kind)}"
                )
    return problems


def parity_providers(available: list[str], gpu_usable: bool) -> list[str]:
    """ONNX Runtime providers for the parity check: CUDA when this build has it and a GPU is
    usable — where an fp16 graph will be served, and where its kernels really run in half
    precision (the CPU provider upcasts many of them) — else the CPU."""
    cuda = "CUDAExecutionProvider"
    if gpu_usable and cuda in available:
        return [cuda, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _ort_run(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """The graph's outputs for ``images`` and the provider that computed them."""
    import onnxruntime as ort

    providers = parity_providers(ort.get_available_providers(), torch.cuda.is_available())
    if len(providers) > 1:
        preload_for_onnxruntime()
    session = ort.InferenceSession(str(path), providers=providers)
    anomaly_map, score = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
    return anomaly_map, score, session.get_providers()[0]


def build_metadata(
    ckpt: dict[str, Any], precision: str, quantization: dict[str, Any] | None = None
) -> ModelMetadata:
    cfg = TrainConfig.from_dict(ckpt["config"])
    history = ckpt.get("history") or [{}]
    summary = {k: v for k, v in ckpt.get("data_summary", {}).items() if k != "holdout"}
    return ModelMetadata(
        backbone=cfg.backbone,
        image_size=cfg.image_size,
        teacher_weights=ckpt.get("teacher_source", cfg.teacher_weights),
        calibration=checkpoint_calibration(ckpt),
        precision=precision,
        rdad_version=__version__,
        training={
            **summary,
            "epochs": ckpt.get("epoch"),
            "final_loss": history[-1].get("loss"),
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "anomaly_map_mode": cfg.anomaly_map_mode,
            "sigma": cfg.sigma,
            "method": cfg.method,
        },
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        tiling=config_tiling(cfg),
        quantization=quantization or {},
    )


def export_onnx(
    checkpoint: Path | str,
    out: Path | str,
    precision: str = "fp32",
    *,
    calibration_data: Path | str | None = None,
    calibration_count: int = DEFAULT_CALIBRATION_COUNT,
) -> Path:
    """Export ``checkpoint`` to ``out`` (refused if the parity check fails); returns ``out``.

    ``int8`` needs ``calibration_data``: a folder of good images (MVTec layout or plain)."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and calibration_data is None:
        raise ExportError("--precision int8 needs --calibration-data (a folder of good images)")
    out = Path(out)
    net, ckpt = load_model(Path(checkpoint))
    if checkpoint_calibration(ckpt) is None:
        raise ExportError(f"{checkpoint} is not calibrated: export the final checkpoint.pt")
    images = parity_images(ckpt, net.image_size)
    ref_maps, ref_scores = predict(net, images)
    int8_plan = None
    if precision == "int8":
        assert calibration_data is not None
        int8_plan = plan_int8(ckpt, net.image_size, Path(calibration_data), calibration_count)

    if precision == "fp16":
        # Backbone, OCBE and student in half precision; the anomaly-map tail (cosine, upsampling,
        # blur, max) stays fp32: cosine distances of near-identical features are small
        # differences of large numbers, which fp16 would round away. The tail module is never
        # converted, so its blur kernel stays the exact fp32 Gaussian (a half → float round trip
        # would keep fp16-rounded values).
        for part in (net.preprocess, net.teacher, net.projection, net.bottleneck, net.student):
            if part is not None:  # projection: RD++ only
                part.half()
    graph = _GraphModule(net).eval()
    example = torch.from_numpy(images[:2])
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        # The TorchScript exporter is used on purpose: on this conv net it produces the same graph
        # as the dynamo exporter ~4x faster, which matters for the test suite and CI.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", "You are using the legacy TorchScript", DeprecationWarning
            )
            # RD++'s InstanceNorm has no running statistics: it normalises per image in eval
            # mode too, which is what the exported "train=True" node does.
            warnings.filterwarnings("ignore", ".*operator 'instance_norm' is set to train=True")
            # The anomaly map reads its feature maps' sizes as Python ints: they are fixed by the
            # input size, which the graph fixes too (its matrices become constants).
            warnings.filterwarnings(
                "ignore", "Converting a tensor to a Python integer", torch.jit.TracerWarning
            )
            torch.onnx.export(
                graph,
                (example,),
                str(tmp_path),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
                opset_version=OPSET,
                dynamo=False,
            )
        proto = onnx.load(str(tmp_path))
        meta = build_metadata(ckpt, precision, int8_plan.metadata if int8_plan else None)
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, meta.to_json()
        method = "RD++" if meta.training["method"] == "rd++" else "Reverse Distillation"
        proto.doc_string = f"rdad {meta.backbone} {meta.image_size}px {method}"
        proto.producer_name, proto.producer_version = "rdad", __version__
        onnx.checker.check_model(proto)
        if precision == "fp16" and (problems := map_tail_problems(proto)):
            raise ExportError(f"fp16 graph has a non-fp32 anomaly-map tail: {problems[:3]}")
        onnx.save(proto, str(tmp_path))

        ort_maps, ort_scores, provider = _ort_run(tmp_path, images)
        diff = max(
            float(np.abs(ort_maps - ref_maps).max()), float(np.abs(ort_scores - ref_scores).max())
        )
        tolerance = FP16_ATOL if precision == "fp16" else FP32_ATOL
        graph_precision = "fp32" if precision == "int8" else precision
        print(
            f"parity ({graph_precision}, {len(images)} images, {provider}): "
            f"max |torch - onnxruntime| = "
            f"{diff:.2e} "
            f"(tolerance {tolerance:.0e})"
        )
        if not diff <= tolerance:  # also refuses NaN
            raise ExportError(
                f"parity check failed: max abs difference {diff:.3e} > {tolerance:.0e}; not written"
            )
        if int8_plan is not None:
            tmp_path = write_int8(tmp_path, int8_plan)
        write_atomically(tmp_path, out)
    print(f"wrote {out}")
    return out

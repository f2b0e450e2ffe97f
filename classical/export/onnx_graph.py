"""One ONNX graph from uint8 RGB pixels to class probabilities, for every kind of model.

- classical heads: the backbone's own checked ONNX graph (the one `classical predict` runs with
  ONNX Runtime) followed by the scikit-learn pipeline converted by skl2onnx (plain probability
  tensor, no ZipMap), merged with `onnx.compose`;
- the Dense head and fine-tuned networks: the whole Keras network converted by the backbone's
  own converter (tf2onnx), with an ArgMax for the label.

Input `images` uint8 (N, S, S, 3); outputs `probabilities` float32 (N, C) and `label` int64 (N,),
an index into the `class_names` metadata property.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from classical.export.sources import Exportable
from embedder import keras_to_onnx, library_versions, onnx_backbone, utc_now

INPUT, PROBABILITIES, LABEL = "images", "probabilities", "label"
ML_OPSET = 3  # ai.onnx.ml: tree ensembles, SVMs, scalers
RESIZE_POLICIES = {
    "crop": "the central square of side min(width, height) resized to S x S (equal to resizing the shorter side "
    "to S, then center-cropping)",
    "squash": "the whole image resized to S x S, ignoring the aspect ratio",
}
RESAMPLING = (
    "Pillow resampling: Image.BOX when shrinking, Image.BILINEAR when enlarging, on 8-bit RGB after "
    "EXIF orientation; transparency composited on white"
)


def metadata(exportable: Exportable, *, precision: str = "fp32") -> dict[str, str]:
    """What a client needs to feed and read the graph, and what it was made from."""
    backbone = exportable.backbone
    return {
        "class_names": json.dumps(exportable.class_names),
        "backbone_key": exportable.backbone_key,
        "image_size": str(backbone.size),
        "resize": backbone.resize,
        "resize_policy": f"{backbone.resize}: {RESIZE_POLICIES[backbone.resize]}; {RESAMPLING}",
        "input": f"{INPUT}: uint8 RGB [N, {backbone.size}, {backbone.size}, 3], 0..255, preprocessing inside",
        "outputs": f"{PROBABILITIES}: float32 [N, {len(exportable.class_names)}]; {LABEL}: int64 [N], "
        "an index into class_names",
        "model_name": exportable.name,
        "model_kind": exportable.kind,
        "precision": precision,
        "source_file": exportable.path.name,
        "source_sha256": exportable.sha256,
        "bottleneck_lab_version": library_versions(("bottleneck-lab",))["bottleneck-lab"],
        "created": utc_now(),
    }


def onnx_graph(exportable: Exportable) -> onnx.ModelProto:
    """The model as one checked-structure ONNX graph with its metadata properties."""
    graph = _neural_graph(exportable) if exportable.neural else _classical_graph(exportable)
    graph.producer_name = "bottleneck-lab"
    graph.doc_string = f"{exportable.name} ({exportable.kind}) on {exportable.backbone_key}: images -> probabilities"
    helper.set_model_props(graph, metadata(exportable))
    onnx.checker.check_model(graph)
    return graph


def _neural_graph(exportable: Exportable) -> onnx.ModelProto:
    """The Keras network through tf2onnx, its output renamed `probabilities`, plus `label`."""
    graph = keras_to_onnx(exportable.network(), exportable.backbone.size)
    _rename_output(graph, graph.graph.output[0].name, PROBABILITIES)
    graph.graph.node.append(
        helper.make_node("ArgMax", [PROBABILITIES], [LABEL], name="label_argmax", axis=1, keepdims=0)
    )
    graph.graph.output.append(helper.make_tensor_value_info(LABEL, onnx.TensorProto.INT64, ["N"]))
    return graph


def _rename_output(graph: onnx.ModelProto, old: str, new: str) -> None:
    for node in graph.graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]
    next(output for output in graph.graph.output if output.name == old).name = new


def _classical_graph(exportable: Exportable) -> onnx.ModelProto:
    """The backbone's ONNX graph, then the head converted by skl2onnx, merged into one."""
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError as exc:
        raise ImportError("exporting a classical head needs skl2onnx: pip install 'bottleneck-lab[export]'") from exc

    backbone = onnx.load(onnx_backbone(exportable.backbone))
    head_model = exportable.head()
    final = head_model.steps[-1][1] if hasattr(head_model, "steps") else head_model
    embeddings = FloatTensorType([None, exportable.saved.metadata["dim"]])
    head = convert_sklearn(
        head_model,
        initial_types=[("embeddings", embeddings)],
        options={id(final): {"zipmap": False}},
        target_opset={"": _opset(backbone), "ai.onnx.ml": ML_OPSET},
    )
    backbone = onnx.compose.add_prefix(backbone, "backbone/", rename_inputs=False)
    _same_opsets(backbone, head)
    merged = onnx.compose.merge_models(backbone, head, io_map=[(backbone.graph.output[0].name, "embeddings")])
    opsets = {entry.domain: entry.version for entry in merged.opset_import}  # merge_models lists each twice
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items()))
    missing = {PROBABILITIES, LABEL} - {output.name for output in merged.graph.output}
    if missing:
        raise RuntimeError(f"skl2onnx gave {exportable.name} no output {sorted(missing)}")
    return merged


def _opset(model: onnx.ModelProto) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _same_opsets(*models: onnx.ModelProto) -> None:
    """Give the models one IR version and one opset per domain, as `merge_models` requires.

    A domain takes the version of the model whose nodes use it (the backbone imports ai.onnx.ml
    without using it); two models using one domain at different versions cannot be merged.
    """
    versions: dict[str, int] = {}
    for model in models:
        used = {node.domain for node in model.graph.node} | {""}
        for entry in model.opset_import:
            domain = "" if entry.domain == "ai.onnx" else entry.domain
            if domain in used:
                if versions.get(domain, entry.version) != entry.version:
                    raise RuntimeError(
                        f"cannot merge graphs using {domain or 'ai.onnx'} opsets {entry.version} and {versions[domain]}"
                    )
                versions[domain] = entry.version
    ir_version = max(model.ir_version for model in models)
    for model in models:
        del model.opset_import[:]
        model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in sorted(versions.items()))
        model.ir_version = ir_version


def onnx_session(path: Path | bytes, *, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the CPU (all cores unless `threads`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(
        path if isinstance(path, bytes) else str(path), options, providers=["CPUExecutionProvider"]
    )


def quantize_int8(fp32: Path, out: Path, pixels: np.ndarray, *, exclude: Sequence[str] = ()) -> None:
    """ONNX Runtime's static int8 quantization (QDQ, per channel) of an exported graph, calibrated on `pixels`.

    Nodes named in `exclude` (a classical head, the softmax) stay in float.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(pixels, max(1, len(pixels) // 16)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    prepared = out.with_name(f"{out.name}.prepared")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
        )
    finally:
        prepared.unlink(missing_ok=True)


def float_nodes(graph: onnx.ModelProto) -> list[str]:
    """Nodes int8 quantization leaves in float: a classical head (all after the backbone) and any softmax."""
    merged = any(node.name.startswith("backbone/") for node in graph.graph.node)
    return [
        node.name
        for node in graph.graph.node
        if node.op_type == "Softmax" or (merged and not node.name.startswith("backbone/"))
    ]

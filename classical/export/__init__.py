"""One-file exports of models: backbone and head as one graph from uint8 RGB pixels to class probabilities.

`export_model` writes ONNX for every kind of model (classical heads through skl2onnx, the Dense
head and fine-tuned networks through the backbone's own tf2onnx converter), and a SavedModel or
TFLite for the neural ones; int8 where ONNX Runtime or TFLite quantize. Importing it imports
neither TensorFlow nor skl2onnx.
"""

from classical.export.sources import Exportable, load_exportable
from classical.export.writing import FORMATS, ExportResult, export_model

__all__ = ["FORMATS", "ExportResult", "Exportable", "export_model", "load_exportable"]

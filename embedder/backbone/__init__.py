"""The backbone: MobileNetV2 with its preprocessing inside, its weights, and the off-the-shelf ImageNet top-k."""

from embedder.backbone.imagenet import Prediction, build_classifier, load_class_names, predict_imagenet, top_classes
from embedder.backbone.model import PRECISION, Backbone, build_mobilenet_v2, uint8_function
from embedder.backbone.weights import keras_weights_filename

__all__ = [
    "PRECISION",
    "Backbone",
    "Prediction",
    "build_classifier",
    "build_mobilenet_v2",
    "keras_weights_filename",
    "load_class_names",
    "predict_imagenet",
    "top_classes",
    "uint8_function",
]

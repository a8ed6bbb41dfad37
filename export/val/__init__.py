"""Accuracy in the user's own metric: top-1 / top-5 for classifiers, COCO mAP50-95 / mAP50 for detectors, for the
original PyTorch model and every written graph, on the same images through the runtime's own preprocessing.

    data = read_data(Path("digits_val/"), model_names=["0", ..., "9"])
    graphs = [OnnxPredictor(Path("classifier.onnx")), OnnxPredictor(Path("classifier_fp16.onnx"))]
    report = evaluate(data, [TorchPredictor(model, graphs[0].prep), *graphs])
"""

from .data import ClassifyData, DetectData, ValData, read_data, read_labels
from .evaluate import FORMAT, ValReport, ValResult, evaluate, render, validate
from .metrics import VAL_CONF, VAL_IOU, VAL_MAX_DET, check_evaluator, coco_map
from .predict import ORIGINAL, OnnxPredictor, Predictor, TorchPredictor, load_original

__all__ = ["FORMAT", "ORIGINAL", "VAL_CONF", "VAL_IOU", "VAL_MAX_DET", "ClassifyData", "DetectData", "OnnxPredictor",
           "Predictor", "TorchPredictor", "ValData", "ValReport", "ValResult", "check_evaluator", "coco_map",
           "evaluate", "load_original", "read_data", "read_labels", "render", "validate"]

"""Accuracy in the user's own metric: top-1 / top-5 for classifiers, COCO mAP50-95 / mAP50 for detectors, for the
original PyTorch model and every written graph, on the same images through the runtime's own preprocessing.

    data = read_data(Path("digits_val/"), model_names=["0", ..., "9"])
    graphs = [OnnxPredictor(Path("classifier.onnx")), OnnxPredictor(Path("classifier_fp16.onnx"))]
    report = evaluate(data, [TorchPredictor(model, graphs[0].prep), *graphs])

``export --val DATA`` (``step.py``): ``val_data`` checks DATA before any export work; ``validate_export`` scores the
original model and every graph of the run once they are built.
"""

from .data import ClassifyData, DetectData, ValData, read_data, read_labels
from .evaluate import FORMAT, ValReport, ValResult, evaluate, render, validate
from .metrics import VAL_CONF, VAL_IOU, VAL_MAX_DET, check_evaluator, coco_map
from .predict import ORIGINAL, OnnxPredictor, Predictor, TorchPredictor, load_original
from .step import ExportValidation, check_val_path, graphs_of_run, val_data, validate_export

__all__ = ["FORMAT", "ORIGINAL", "VAL_CONF", "VAL_IOU", "VAL_MAX_DET", "ClassifyData", "DetectData", "ExportValidation",
           "OnnxPredictor", "Predictor", "TorchPredictor", "ValData", "ValReport", "ValResult", "check_evaluator",
           "check_val_path", "coco_map", "evaluate", "graphs_of_run", "load_original", "read_data", "read_labels",
           "render", "val_data", "validate", "validate_export"]

"""From a PyTorch model to ONNX and TensorRT: load, export, simplify, mixed precision, target checks, parity."""

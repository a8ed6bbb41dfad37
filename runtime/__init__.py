"""What runs on the Jetson: numpy + onnxruntime only (no torch), Python 3.8 syntax."""

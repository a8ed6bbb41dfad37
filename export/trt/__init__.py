"""TensorRT engines: ``api`` (the TensorRT Python API as used here, typed against tensorrt-stubs), ``build``
(ONNX -> engine + sidecar + EPContext model + timing cache), ``sidecar`` (what an engine was built from and for,
checked before it is deserialized) and ``run`` (run an engine, compare it with reference outputs).

TensorRT is imported lazily: importing this package needs only onnx. On this project's development and CI
machines (no GPU, no TensorRT libraries) it is exercised through a test double of the API
(``tests/export/trt_double.py``) and type-checked against ``tensorrt-stubs`` (``.ci/mypy-trt``).
"""

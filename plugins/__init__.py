"""Custom operators across runtimes: DeformConv lowerings' op contracts and CPU reference implementations.

- ``deform_conv_contract``: argument orders, attributes and domains of ONNX ``DeformConv`` and TensorRT's
  ``ModulatedDeformConv2d`` plugin node; ``DeformConvParams``.
- ``deform_conv_reference``: numpy reference of the plugin op (torchvision's sampling rule).
- ``plugin_node``: find plugin nodes, move them between domains (``plugin_trt_domain``), convert opsets.
- ``ort_cpu``: ``cpu_session`` runs any graph of ours on onnxruntime CPU, plugin nodes through the reference
  op (onnxruntime-extensions, imported only for plugin graphs).
"""

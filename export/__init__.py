"""cbldm.export: ONNX / TensorRT export of the trained networks."""

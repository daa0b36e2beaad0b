"""Export backends: ONNX (with int8 quantisation), plus the shared wrappers, parity checks and sidecars."""

"""Inference: the one Predictor (torch or ONNX), batch jobs over folders and their outputs, ONNX export."""

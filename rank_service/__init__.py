"""Rank service: stateless ONNX Runtime scoring of fused user-item vectors."""

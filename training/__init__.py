"""Train-time package: data, two-tower fine-tuning, ONNX export, evaluation, bundle writing.

Imports torch, transformers and optimum; serving code never imports this package.
"""

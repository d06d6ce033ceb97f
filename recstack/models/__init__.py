"""Model execution: ONNX Runtime sessions (provider choice, model guard), the text encoder,
the user tower, and the dynamic batcher that merges concurrent runs."""

"""Side-by-side benchmarks (run as ``python -m bench.<name>``); may import torch, unlike serving."""

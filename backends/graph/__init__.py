"""backend=graph: our own BLOOM and Llama decode, one CUDA-graph-captured step per token (spec.py, backend.py)."""

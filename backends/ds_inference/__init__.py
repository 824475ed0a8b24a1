"""backend=ds-inference: DeepSpeed-Inference, tensor parallel over every rank (spec.py, backend.py)."""

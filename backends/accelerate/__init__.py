"""backend=accelerate: Hugging Face Accelerate's big-model inference (spec.py, backend.py)."""

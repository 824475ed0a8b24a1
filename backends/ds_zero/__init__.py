"""backend=ds-zero: DeepSpeed ZeRO-3 inference, optionally offloaded (spec.py, backend.py)."""

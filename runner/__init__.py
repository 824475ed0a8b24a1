"""The Hydra app: one job = validate -> launch under deepspeed/accelerate -> collect."""

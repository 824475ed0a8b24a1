"""A second synthetic architecture: the Llama shape (grouped-query attention, SDPA) through the real runner."""
import json

import pytest
from conftest import results, run_runner


def test_llama_sdpa_and_eager_side_by_side(tmp_path, cache_dir):
    """Both attention implementations run and are recorded as what ran; they compute the same function
    (the same top-5 next tokens after the prompt, logits within bf16 rounding); the KV cache the roofline
    counts is the grouped one (2 of 4 heads)."""
    proc = run_runner(["-m", "model=llama-tiny", "backend.attn_implementation=sdpa,eager", "batch_size=2",
                       "new_tokens=4", "repeats=1", "prompt_tokens=4", "isolate=false",
                       f"hydra.sweep.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    sdpa, eager = results(tmp_path)
    assert [r["status"] for r in (sdpa, eager)] == ["ok", "ok"], [sdpa["reason"], eager["reason"]]
    assert (sdpa["backend_info"]["attn_implementation"], eager["backend_info"]["attn_implementation"]) == ("sdpa", "eager")
    assert sdpa["model_loaded_by_job"] == 0 and eager["model_loaded_by_job"] == 1  # a model per implementation
    assert sdpa["prompt_logits_top5"]["ids"] == eager["prompt_logits_top5"]["ids"]
    assert sdpa["prompt_logits_top5"]["logits"] == pytest.approx(eager["prompt_logits_top5"]["logits"], rel=2e-2)
    kv_width = 64 * 2 // 4
    assert sdpa["roofline"]["kv_bytes"] == 2 * 2 * kv_width * 2 * 2 * (4 + 4 / 2)
    saved = [json.loads(p.read_text()) for p in (cache_dir / "models").glob("llama-tiny-llama-*/config.json")]
    assert saved and {(c["model_type"], c["num_key_value_heads"]) for c in saved} == {("llama", 2)}

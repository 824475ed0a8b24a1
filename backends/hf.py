"""What every backend does with a Hugging Face model: the torch dtype of a `dtype` option, from_pretrained's
dtype argument across transformers versions, the modelling code imported ahead of the timed load, and
the one generate call the measurement is defined on."""
import torch
import transformers

from backends.spec import version_tuple

# int8 loads fp16 weights and quantises them (bitsandbytes, DeepSpeed's int8 kernels).
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float16}


def dtype_kwargs(dtype: torch.dtype) -> dict:
    """from_pretrained/from_config's dtype argument: `dtype` since transformers 4.56, `torch_dtype` before
    (the 4.43.4 stack that DeepSpeed's BLOOM kernels need)."""
    return {"dtype": dtype} if version_tuple(transformers.__version__) >= (4, 56) else {"torch_dtype": dtype}


def import_model_code(checkpoint: str) -> None:
    """Imports the checkpoint architecture's transformers modelling module: a one-off cost of the process's
    first model (about a second), not of loading one, so the worker pays it before load_s starts."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config_class = type(AutoConfig.from_pretrained(checkpoint))
    if config_class in MODEL_FOR_CAUSAL_LM_MAPPING:  # one it lacks fails in load(), in transformers' words
        MODEL_FOR_CAUSAL_LM_MAPPING[config_class]


def greedy_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int,
                    streamer=None, **extra) -> torch.Tensor:
    """Greedy decoding of exactly `new_tokens` tokens with the KV cache on; `streamer` (the Backend
    protocol's, backends/measure.py) is handed to generate."""
    with torch.no_grad():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
                              pad_token_id=model.config.pad_token_id, streamer=streamer, **extra)

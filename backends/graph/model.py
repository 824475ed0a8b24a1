"""Minimal decoder-only model code in plain PyTorch for the BLOOM and Llama shapes, with a static KV cache.

The module and parameter names mirror transformers' (BloomForCausalLM, LlamaForCausalLM), so a Hugging
Face safetensors checkpoint loads by name (Llama's q/k/v and gate/up projections stacked into one matrix
each as it loads: fewer, larger matmuls per step). Every forward takes one of two shapes:
  full     the prompt at positions 0..T-1, fresh keys and values (optionally stored in the cache)
  decode   one token per sequence at position `pos` (a one-element device tensor, so shapes never change
           from step to step): its key and value written into the cache at `pos`, attention over the
           cache's first `span` positions (a Python int, pos < span) with those after `pos` masked out
Attention is computed as transformers' eager attention does (scores, fp32 softmax, weighted values),
grouped-query attention without copying the cache (query heads grouped under their key/value head).
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from backends.graph.spec import ARCHS


@dataclass
class Step:
    """Where a decode step is: the position of its tokens (device tensor [1]) and the cache positions
    its attention reads (the first `span`)."""
    pos: torch.Tensor
    span: int


@dataclass
class Output:
    logits: torch.Tensor  # [batch, tokens, vocab]


class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions: one [batch, kv_heads, max_len,
    head_dim] tensor per layer and kind (separate tensors, so that a compiled step mutates each in place)."""

    def __init__(self, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.max_len = max_len


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v. q [B, H, T, D]; k, v [B, H_kv, S, D]; bias fp32, broadcast to
    [B, H, T, S] (-inf where a key is masked). Returns [B, T, H * D]."""
    b, h, t, d = q.shape
    kv_heads, s = k.shape[1], k.shape[2]
    grouped = q.reshape(b, kv_heads, (h // kv_heads) * t, d)
    scores = torch.matmul(grouped, k.transpose(-1, -2)).view(b, h, t, s)
    scores = torch.add(bias, scores, alpha=1 / math.sqrt(d))  # one kernel: to fp32, scaled, biased
    probs = torch.softmax(scores, dim=-1).to(v.dtype).view(b, kv_heads, (h // kv_heads) * t, s)
    return torch.matmul(probs, v).view(b, h, t, d).transpose(1, 2).reshape(b, t, h * d)


def causal_mask(t: int, device: torch.device) -> torch.Tensor:
    """[T, T] fp32: 0 where key j <= query i, -inf after."""
    return torch.full((t, t), float("-inf"), device=device).triu(1)


def step_mask(step: Step) -> torch.Tensor:
    """[span] fp32: 0 for the cache positions up to the step's, -inf after (stale or empty entries)."""
    positions = torch.arange(step.span, device=step.pos.device)
    return torch.zeros(step.span, device=step.pos.device).masked_fill(positions > step.pos, float("-inf"))


def store_kv(cache: KVCache | None, layer: int, k: torch.Tensor, v: torch.Tensor,
             step: Step | None) -> tuple:
    """The keys and values a layer attends over: the fresh ones (full; copied into the cache's first
    positions when there is one), or the cache's first `span` positions after writing this token's at
    `pos` (decode)."""
    if step is None:
        if cache is not None:
            cache.k[layer][:, :, :k.shape[2]] = k
            cache.v[layer][:, :, :v.shape[2]] = v
        return k, v
    cache.k[layer][:, :, step.pos] = k
    cache.v[layer][:, :, step.pos] = v
    return cache.k[layer][:, :, :step.span], cache.v[layer][:, :, :step.span]


def alibi_slopes(heads: int) -> torch.Tensor:
    """BLOOM's per-head ALiBi slopes (transformers' _get_alibi_slopes)."""
    closest = 2 ** math.floor(math.log2(heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base ** p for p in range(1, closest + 1)]
    if closest != heads:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** p for p in range(1, 1 + 2 * min(closest, heads - closest), 2)]
    return torch.tensor(slopes, dtype=torch.float32)


class CausalLM(nn.Module):
    """What both architectures offer the decoder: forward (every position's logits, as a transformers
    model's), prefill (the last position's logits, the cache filled) and decode (one token at `pos`).
    A subclass has `run(ids, cache, step) -> final hidden states`, `lm_head` and `prepare(max_len)`."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Output:
        self.prepare(input_ids.shape[1])
        return Output(self.lm_head(self.run(input_ids, None, None)))

    def prefill(self, ids: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        self.prepare(cache.max_len if cache is not None else ids.shape[1])
        return self.lm_head(self.run(ids, cache, None)[:, -1])

    def tables(self) -> tuple:
        """The position tables prepare() built (what a decode step reads besides weights and cache)."""
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache,
               span: int | None = None) -> torch.Tensor:
        """The logits after one token per sequence at `pos`, attending over the cache's first `span`
        positions (None: all). Call prepare(cache.max_len) first: nothing here allocates from the host."""
        step = Step(pos, span or cache.max_len)
        return self.lm_head(self.run(tokens[:, None], cache, step)[:, -1])


class BloomAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query_key_value = nn.Linear(hidden, 3 * hidden)
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x, bias, cache, layer, step):
        b, t, _ = x.shape
        # the fused projection holds each head's [q, k, v] together
        qkv = self.query_key_value(x).view(b, t, self.heads, 3, self.head_dim)
        q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))
        k, v = store_kv(cache, layer, k, v, step)
        return self.dense(attention(q, k, v, bias))


class BloomMLP(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(hidden, 4 * hidden)
        self.dense_4h_to_h = nn.Linear(4 * hidden, hidden)

    def forward(self, x):
        # BLOOM's GELU is the tanh approximation (its constant 0.79788456 is sqrt(2/pi) to 8 digits): one kernel
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))


class BloomBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.self_attention = BloomAttention(hidden, heads)
        self.post_attention_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.mlp = BloomMLP(hidden)

    def forward(self, x, bias, cache, layer, step):
        x = x + self.self_attention(self.input_layernorm(x), bias, cache, layer, step)
        return x + self.mlp(self.post_attention_layernorm(x))


class BloomTransformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.word_embeddings_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.h = nn.ModuleList(BloomBlock(config.hidden_size, config.n_head, eps) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=eps)


class Bloom(CausalLM):
    """BLOOM: ALiBi position biases, fused QKV, layer-normed embeddings, tied output head."""

    def __init__(self, config):
        super().__init__()
        if config.apply_residual_connection_post_layernorm:
            raise NotImplementedError("backend=graph: BLOOM with apply_residual_connection_post_layernorm=true "
                                      "is not implemented (allowed: false, every BLOOM checkpoint's value)")
        self.config = config
        self.transformer = BloomTransformer(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.word_embeddings.weight
        self.heads, self.head_dim = config.n_head, config.hidden_size // config.n_head
        self.kv_heads, self.layers = config.n_head, config.n_layer
        self.alibi = None

    def tie_weights(self) -> None:
        self.lm_head.weight = self.transformer.word_embeddings.weight

    def prepare(self, max_len: int) -> None:
        """The ALiBi table [H, 1, positions], slope * key position, built ahead of any captured step
        (softmax is shift-invariant, so the query's own position can be left out)."""
        device = self.lm_head.weight.device
        if self.alibi is None or self.alibi.shape[-1] < max_len or self.alibi.device != device:
            positions = torch.arange(max(max_len, 2048), device=device, dtype=torch.float32)
            self.alibi = alibi_slopes(self.heads).to(device)[:, None, None] * positions

    def tables(self) -> tuple:
        return (self.alibi,)

    def run(self, ids: torch.Tensor, cache: KVCache | None, step: Step | None) -> torch.Tensor:
        t = ids.shape[1]
        if step is None:
            bias = self.alibi[..., :t] + causal_mask(t, ids.device)
        else:
            bias = self.alibi[..., :step.span] + step_mask(step)
        tr = self.transformer
        x = tr.word_embeddings_layernorm(tr.word_embeddings(ids))
        for i, block in enumerate(tr.h):
            x = block(x, bias, cache, i, step)
        return tr.ln_f(x)


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x):
        # transformers' order: normalised in fp32, cast to the input's dtype, then scaled by the weight
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        # transformers' q_proj, k_proj and v_proj stacked (load() does it): one matmul instead of three
        self.qkv_proj = nn.Linear(hidden, (heads + 2 * kv_heads) * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(self, x, cos, sin, bias, cache, layer, step):
        b, t, _ = x.shape
        q, k, v = self.qkv_proj(x).split([self.heads * self.head_dim] + [self.kv_heads * self.head_dim] * 2, -1)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = store_kv(cache, layer, k, v, step)
        return self.o_proj(attention(q, k, v, bias))


class LlamaMLP(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        # transformers' gate_proj and up_proj stacked (load() does it)
        self.gate_up_proj = nn.Linear(hidden, 2 * inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    def __init__(self, config, head_dim: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config.hidden_size, config.num_attention_heads,
                                        config.num_key_value_heads, head_dim)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size)

    def forward(self, x, cos, sin, bias, cache, layer, step):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, bias, cache, layer, step)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config, head_dim: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaBlock(config, head_dim) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


def rope_theta(config) -> float:
    """RoPE's base: rope_parameters (transformers >= 5) or rope_theta; only the default (unscaled) RoPE."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise NotImplementedError(f"backend=graph: rope_type={kind} is not implemented (allowed: default)")
    return float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


class Llama(CausalLM):
    """Llama: RMSNorm, RoPE (transformers' rotate_half convention), grouped-query attention, SwiGLU."""

    def __init__(self, config):
        super().__init__()
        if config.hidden_act != "silu":
            raise NotImplementedError(f"backend=graph: hidden_act={config.hidden_act} (allowed: silu)")
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise NotImplementedError("backend=graph: Llama with attention_bias or mlp_bias (allowed: none)")
        self.config = config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = config.num_hidden_layers
        self.model = LlamaModel(config, self.head_dim)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        self.theta = rope_theta(config)
        self.rope = None

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def prepare(self, max_len: int) -> None:
        """The RoPE tables (cos, sin) [positions, head_dim] in the weights' dtype, built ahead of any
        captured step."""
        weight = self.lm_head.weight
        if self.rope is None or self.rope[0].shape[0] < max_len or self.rope[0].device != weight.device:
            inv_freq = 1.0 / self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32,
                                                         device=weight.device) / self.head_dim)
            positions = torch.arange(max(max_len, 2048), dtype=torch.float32, device=weight.device)
            emb = torch.cat((positions[:, None] * inv_freq,) * 2, dim=-1)
            self.rope = (emb.cos().to(weight.dtype), emb.sin().to(weight.dtype))

    def tables(self) -> tuple:
        return self.rope

    def run(self, ids: torch.Tensor, cache: KVCache | None, step: Step | None) -> torch.Tensor:
        t = ids.shape[1]
        x = self.model.embed_tokens(ids)
        cos, sin = self.rope
        if step is None:
            cos, sin, bias = cos[:t], sin[:t], causal_mask(t, ids.device)
        else:
            cos, sin, bias = cos[step.pos], sin[step.pos], step_mask(step)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, bias, cache, i, step)
        return self.model.norm(x)



def _state_dict(checkpoint: Path, device: str) -> dict:
    """Every tensor of a safetensors checkpoint (one file, or the shards its index names), on `device`."""
    from safetensors.torch import load_file

    index = checkpoint / "model.safetensors.index.json"
    files = ["model.safetensors"]
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if not (checkpoint / files[0]).exists():
        raise FileNotFoundError(f"model: no safetensors weights in {checkpoint} (backend=graph reads "
                                "model.safetensors or model.safetensors.index.json)")
    tensors = {}
    for file in files:
        tensors.update(load_file(str(checkpoint / file), device=device))
    return tensors


def build(config) -> CausalLM:
    """The model for a transformers config (its model_type: bloom | llama), parameters on the meta device."""
    classes = {"bloom": Bloom, "llama": Llama}
    if config.model_type not in classes:
        raise NotImplementedError(f"model_type={config.model_type}: backend=graph has model code for "
                                  f"{', '.join(ARCHS)} only")
    with torch.device("meta"):
        return classes[config.model_type](config)


# (our stacked weight, transformers' weights in its order) of a Llama layer
LLAMA_STACKED = (("self_attn.qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                 ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")))


def stack_llama(state: dict) -> dict:
    """transformers' per-projection Llama weights stacked into ours (qkv_proj, gate_up_proj), in place."""
    layers = {name.split(".")[2] for name in state if name.startswith("model.layers.")}
    for i in sorted(layers):
        for ours, theirs in LLAMA_STACKED:
            names = [f"model.layers.{i}.{n}.weight" for n in theirs]
            if all(n in state for n in names):
                state[f"model.layers.{i}.{ours}.weight"] = torch.cat([state.pop(n) for n in names])
    return state


def load(checkpoint: str, dtype: torch.dtype, device: torch.device) -> CausalLM:
    """The model of a Hugging Face checkpoint directory, its weights read from safetensors straight onto
    `device` in `dtype`. Names as transformers saves them; BLOOM's original checkpoints lack the
    `transformer.` prefix, a tied output head is stored once, as the embedding, and Llama's q/k/v and
    gate/up projections are stacked into one matrix each."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint)
    model = build(config)
    expected = {name for name, _ in model.named_parameters()}  # a tied head appears once
    prefix = "transformer." if config.model_type == "bloom" else ""
    state = {}
    tensors = _state_dict(Path(checkpoint), str(device))
    if config.model_type == "llama":
        tensors = stack_llama(tensors)
    for name, tensor in tensors.items():
        name = name if name in expected or not prefix else prefix + name
        if name in expected:
            state[name] = tensor.to(dtype)
    missing = sorted(expected - set(state))
    if missing:
        raise KeyError(f"model: checkpoint {checkpoint} lacks {len(missing)} weights backend=graph needs, "
                       f"first {missing[0]}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.eval()

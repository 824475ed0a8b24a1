"""Greedy generation with a static KV cache and one decode step replayed as a CUDA graph.

For a batch shape (batch, prompt + new tokens) the decoder allocates once: the KV cache, the step's
input token per sequence, its position (a one-element device tensor) and the output ids [batch,
max_len]. The step reads them and writes them in place: the token's key and value into the cache at
`pos`, the argmax of the logits into the input token and into the output ids at pos + 1, then pos + 1.
Nothing in it waits on the host, so on a GPU it is captured once (after warm-up steps on a side stream)
and each decode step is one graph replay; on the CPU the same step runs eagerly. Optionally the step is
torch.compile'd before capture (inductor without its own CUDA graphs: this module captures).
"""
import time
from dataclasses import dataclass

import torch

from backends.graph.model import CausalLM, KVCache

WARMUP_STEPS = 3  # eager (or compiled) steps on the side stream before capture: lazy init, autotuning


@dataclass
class StepState:
    """The static buffers one captured step reads and writes."""
    cache: KVCache
    tokens: torch.Tensor     # [batch] the token each sequence feeds the next step
    pos: torch.Tensor        # [1] the position of those tokens
    generated: torch.Tensor  # [batch, max_len] the prompt, then each token as it is chosen
    tables: tuple            # the model's position tables the step reads (held: a graph keeps no reference)


class StaticDecoder:
    def __init__(self, model: CausalLM, use_graph: bool, compile_mode: str | None):
        self.model, self.use_graph, self.compile_mode = model, use_graph, compile_mode
        self.shape = None  # (batch, max_len) of the state and graph below
        self.state: StepState | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.step_fn = self._compiled() if compile_mode else self.step
        self.timings: dict = {}  # compile_s, capture_s of the current shape

    def step(self, state: StepState) -> torch.Tensor:
        """One decode step for the whole batch, entirely on the device; returns the step's logits."""
        logits = self.model.decode(state.tokens, state.pos, state.cache)
        chosen = torch.argmax(logits, dim=-1)
        state.tokens.copy_(chosen)
        state.generated[:, state.pos + 1] = chosen[:, None]
        state.pos.add_(1)
        return logits

    def _compiled(self):
        return torch.compile(self.step, mode=self.compile_mode, fullgraph=True, dynamic=False)

    def _allocate(self, batch: int, max_len: int, device: torch.device) -> StepState:
        m, weight = self.model, self.model.lm_head.weight
        cache = KVCache(m.layers, batch, m.kv_heads, max_len, m.head_dim, weight.dtype, device)
        return StepState(cache=cache, tokens=torch.zeros(batch, dtype=torch.long, device=device),
                         pos=torch.zeros(1, dtype=torch.long, device=device),
                         generated=torch.zeros(batch, max_len, dtype=torch.long, device=device),
                         tables=m.tables())

    def _warm_up(self, state: StepState) -> None:
        """Steps at position 0 (what they write is overwritten by the prefill or masked): lazy
        initialisation, and the compilation when the step is compiled (its time is compile_s)."""
        for _ in range(WARMUP_STEPS):
            state.pos.zero_()
            self.step_fn(state)

    def _capture(self, state: StepState) -> torch.cuda.CUDAGraph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            start = time.perf_counter()
            self._warm_up(state)
            torch.cuda.synchronize()
            self.timings["warmup_steps_s"] = time.perf_counter() - start
        torch.cuda.current_stream().wait_stream(side)
        state.pos.zero_()
        graph = torch.cuda.CUDAGraph()
        start = time.perf_counter()
        try:
            with torch.cuda.graph(graph):
                self.step_fn(state)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            raise RuntimeError(f"backend=graph: capturing the decode step as a CUDA graph failed ({exc}); "
                               "backend.cuda_graph=false runs the same step uncaptured") from exc
        torch.cuda.synchronize()
        self.timings["capture_s"] = time.perf_counter() - start
        return graph

    def _ready(self, batch: int, max_len: int, device: torch.device) -> StepState:
        """The state (and graph) for this shape: kept from the previous generate, or made now (the one
        before is freed first: a session measures batch size after batch size in one process)."""
        if self.shape == (batch, max_len):
            return self.state
        self.state = self.graph = self.shape = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        self.timings = {}
        self.model.prepare(max_len)
        state = self._allocate(batch, max_len, device)
        if self.use_graph:
            self.graph = self._capture(state)
        elif self.compile_mode:
            start = time.perf_counter()
            self._warm_up(state)
            self.timings["warmup_steps_s"] = time.perf_counter() - start
        # compiling happens in the first warm-up step: the warm-up's time is the compile's
        self.timings["compile_s"] = self.timings.get("warmup_steps_s") if self.compile_mode else None
        self.state, self.shape = state, (batch, max_len)
        return state

    def generate(self, input_ids: torch.Tensor, new_tokens: int, streamer=None) -> torch.Tensor:
        """[batch, prompt + new_tokens]: the prompt, then exactly `new_tokens` greedy tokens. The first
        generate of a captured shape is decoded a second time without the graph, the same step launched
        op by op: `timings["graph_check"]` says whether the replays chose the same tokens. `streamer`
        (transformers' protocol: put the prompt, then each step's tokens, then end) is told of every step."""
        batch, prompt = input_ids.shape
        if new_tokens == 1:  # the first token comes from the prefill alone: no cache
            chosen = torch.argmax(self.model.prefill(input_ids, None), dim=-1)
            if streamer is not None:
                streamer.put(input_ids)
                streamer.put(chosen[:, None])
                streamer.end()
            return torch.cat([input_ids, chosen[:, None]], dim=1)
        fresh = self.shape != (batch, prompt + new_tokens)
        state = self._ready(batch, prompt + new_tokens, input_ids.device)
        out = self._decode(state, input_ids, new_tokens, replay=self.graph is not None, streamer=streamer)
        if fresh and self.graph is not None:
            differ = int((self._decode(state, input_ids, new_tokens, replay=False) != out).sum())
            self.timings["graph_check"] = ("replays identical to the uncaptured step" if differ == 0 else
                                           f"{differ} of {batch * new_tokens} tokens differ from the uncaptured step")
        return out

    def _decode(self, state: StepState, input_ids: torch.Tensor, new_tokens: int, replay: bool,
                streamer=None) -> torch.Tensor:
        prompt = input_ids.shape[1]
        state.generated[:, :prompt] = input_ids
        if streamer is not None:
            streamer.put(input_ids)
        chosen = torch.argmax(self.model.prefill(input_ids, state.cache), dim=-1)
        state.tokens.copy_(chosen)
        state.generated[:, prompt] = chosen
        state.pos.fill_(prompt)
        if streamer is not None:
            streamer.put(state.tokens[:, None])
        for _ in range(new_tokens - 1):
            if replay:
                self.graph.replay()
            else:
                self.step_fn(state)
            if streamer is not None:
                streamer.put(state.tokens[:, None])
        if streamer is not None:
            streamer.end()
        return state.generated.clone()

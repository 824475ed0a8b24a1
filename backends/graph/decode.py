"""Greedy generation with a static KV cache and the decode step replayed as CUDA graphs.

For a batch shape (batch, prompt + new tokens = max_len) the decoder allocates once: the KV cache, the
step's input token per sequence, its position (a one-element device tensor) and the output ids [batch,
max_len]. The step reads them and writes them in place: the token's key and value into the cache at
`pos`, the argmax of the logits into the input token and into the output ids at pos + 1, then pos + 1.
Nothing in it waits on the host, so on a GPU it is captured once (after warm-up steps on a side stream)
and each decode step is one graph replay; on the CPU the same step runs eagerly.

Attention reads the cache in spans: a step at position t attends over the first `span` positions, the
smallest multiple of `span_step` above t (or max_len), so that a step reads about the keys and values
it needs, not the whole preallocated cache. One graph per span, captured in increasing order into one
memory pool and replayed in that order. Optionally the step is torch.compile'd before capture (inductor
without its own CUDA graphs: this module captures); a compiled step attends over the whole cache (one
span: one compilation per batch shape).
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


def spans(max_len: int, span_step: int) -> list:
    """The attention spans of a cache of `max_len` positions: every multiple of span_step below max_len,
    then max_len (span_step 0: the whole cache only)."""
    return (list(range(span_step, max_len, span_step)) if span_step > 0 else []) + [max_len]


class StaticDecoder:
    def __init__(self, model: CausalLM, use_graph: bool, compile_mode: str | None, span_step: int = 0):
        self.model, self.use_graph, self.compile_mode = model, use_graph, compile_mode
        self.span_step = 0 if compile_mode else span_step  # a compiled step: one span, one compilation
        self.shape = None  # (batch, max_len) of the state and graphs below
        self.state: StepState | None = None
        self.graphs: dict = {}  # span -> its captured step
        self.step_fn = self._compiled() if compile_mode else self.step
        self.timings: dict = {}  # compile_s, capture_s, ... of the current shape

    def step(self, state: StepState, span: int) -> torch.Tensor:
        """One decode step for the whole batch, entirely on the device; returns the step's logits."""
        logits = self.model.decode(state.tokens, state.pos, state.cache, span)
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

    def _warm_up(self, state: StepState, span: int) -> None:
        """Steps at position 0 (what they write is overwritten by the prefill or masked): lazy
        initialisation, and the compilation when the step is compiled (its time is compile_s)."""
        for _ in range(WARMUP_STEPS):
            state.pos.zero_()
            self.step_fn(state, span)

    def _capture(self, state: StepState) -> dict:
        """{span: graph} for every span of the state's cache, sharing one memory pool."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            start = time.perf_counter()
            for span in spans(state.cache.max_len, self.span_step):
                self._warm_up(state, span)
            torch.cuda.synchronize()
            self.timings["warmup_steps_s"] = time.perf_counter() - start
        torch.cuda.current_stream().wait_stream(side)
        graphs, pool = {}, None
        start = time.perf_counter()
        for span in spans(state.cache.max_len, self.span_step):
            state.pos.zero_()
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=pool):
                    self.step_fn(state, span)
            except torch.cuda.OutOfMemoryError:
                raise
            except RuntimeError as exc:
                raise RuntimeError(f"backend=graph: capturing the decode step as a CUDA graph failed ({exc}); "
                                   "backend.cuda_graph=false runs the same step uncaptured") from exc
            graphs[span], pool = graph, graph.pool()
        torch.cuda.synchronize()
        self.timings["capture_s"] = time.perf_counter() - start
        self.timings["graphs"] = len(graphs)
        return graphs

    def _ready(self, batch: int, max_len: int, device: torch.device) -> StepState:
        """The state (and graphs) for this shape: kept from the previous generate, or made now (those
        before are freed first: a session measures batch size after batch size in one process)."""
        if self.shape == (batch, max_len):
            return self.state
        self.state, self.graphs, self.shape = None, {}, None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        self.timings = {}
        self.model.prepare(max_len)
        state = self._allocate(batch, max_len, device)
        if self.use_graph:
            self.graphs = self._capture(state)
        elif self.compile_mode:
            start = time.perf_counter()
            self._warm_up(state, max_len)
            self.timings["warmup_steps_s"] = time.perf_counter() - start
        # compiling happens in the first warm-up step: the warm-up's time is the compile's
        self.timings["compile_s"] = self.timings.get("warmup_steps_s") if self.compile_mode else None
        self.state, self.shape = state, (batch, max_len)
        return state

    def generate(self, input_ids: torch.Tensor, new_tokens: int, streamer=None) -> torch.Tensor:
        """[batch, prompt + new_tokens]: the prompt, then exactly `new_tokens` greedy tokens. The first
        generate of a captured shape is decoded a second time without the graphs, the same step launched
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
        out = self._decode(state, input_ids, new_tokens, replay=bool(self.graphs), streamer=streamer)
        if fresh and self.graphs:
            differ = int((self._decode(state, input_ids, new_tokens, replay=False) != out).sum())
            self.timings["graph_check"] = (
                "replays identical to the uncaptured step" if differ == 0
                else f"{differ} of {batch * new_tokens} tokens differ from the uncaptured step")
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
        all_spans = spans(state.cache.max_len, self.span_step)
        for t in range(prompt, prompt + new_tokens - 1):  # the position of the step's input token
            span = next(s for s in all_spans if s > t)
            if replay:
                self.graphs[span].replay()
            else:
                self.step_fn(state, span)
            if streamer is not None:
                streamer.put(state.tokens[:, None])
        if streamer is not None:
            streamer.end()
        return state.generated.clone()

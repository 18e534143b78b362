"""Text generation from a gen ONNX export with onnxruntime and numpy (no torch).

    from gen.runtime import OnnxModel

    model = OnnxModel("model.onnx")
    for piece in model.stream("ROMEO:", sampler="top_p:p=0.9", seed=1, max_new_tokens=200):
        print(piece, end="", flush=True)
    model.generate(["ROMEO:", "JULIET:"], sampler="greedy", max_new_tokens=100)
    model.generate(["Date: "], constraint=Constraint("regex", "[0-9]{4}-[0-9]{2}"))  # gen.core.constraints

An OnnxModel is a backend of gen.core.generation (as gen.core.training.torch_backend.TorchBackend
is for a checkpoint; `gen.core.cli.backends.open_backend` opens either): the generation loop, the context
policy past `block_size`, the stop strings and the samplers are the very code the
torch generator (`gen sample`) runs, so the same export, sampler and seed give the
same text on both. This module supplies only the model step: it prefills the prompt
with a zero-length past, then feeds one token per step and hands onnxruntime's
`present.*` outputs back as the next `past_key_values.*` inputs. For a model whose
cache is a fixed-size state (`gen info`: "state of ..."), the past is the list of its
state arrays (batch first, in the metadata's order) instead: it starts at zeros and
each step's `present_state.*` replaces it.

Speed: a decode step of a small model is a few hundred microseconds, so what matters
is what runs around it. The session runs with all graph optimisations (onnxruntime
fuses LayerNorm, Gelu and the attention's transposed MatMul), and the step keeps
everything as numpy arrays in the order the graph wants them. It runs on one
intra-op thread unless `threads` says otherwise: a step at small batch sizes is a
chain of tiny operators where a thread pool gains nothing, and on a busy machine
its spinning threads halve the speed (measured on 2 cores: batch 1 is as fast on
one thread as on two when the machine is idle and twice as fast when it is busy).
Large batches are matrix work that more threads speed up on an idle machine:
`OnnxModel(path, threads=2)`.

Threads: one OnnxModel may be shared by any number of Python threads. After it is
built it holds only read-only state (the session, the tokenizer, the metadata);
each call makes its own sampler chain, random stream, history and KV cache, and
onnxruntime's `InferenceSession.run` is safe to call from several threads at once.
So a call's text depends only on its own arguments: threads that share an OnnxModel,
each with its own seed, get exactly the texts they would get alone.
"""
from __future__ import annotations

import os
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnxruntime

from gen.core.constraints import Constraint
from gen.core.errors import GenError, first_line
from gen.core.generation import (
    DEFAULT_MAX_NEW_TOKENS,
    BackendBase,
    GenerationOptions,
    TextStep,
    TokenChoice,
    generate_text,
)
from gen.core.sampling import Sampler, Sampling
from gen.core.tokenizer import tokenizer_from_dict
from gen.runtime.artifact import (
    ATTENTION_MASK,
    CACHE_POSITION,
    INPUT_IDS,
    LOGITS,
    attention_names,
    past_names,
    past_state_names,
    present_names,
    present_state_names,
    read_artifact,
)

CPU_PROVIDER = "CPUExecutionProvider"
# The first onnxruntime whose GroupQueryAttention takes an attention bias (input 10), which the
# fixed-capacity cache's graph uses (1.21 refuses the graph, 1.22 runs it).
STATIC_CACHE_ONNXRUNTIME = (1, 22)


def _check_onnxruntime_for_static_cache(path: str) -> None:
    from packaging.version import Version  # here: only a fixed-capacity export needs it

    if Version(onnxruntime.__version__).release < STATIC_CACHE_ONNXRUNTIME:
        raise GenError(f"{path} has a fixed-capacity cache (gen export --static-cache), which needs onnxruntime "
                       f"{'.'.join(map(str, STATIC_CACHE_ONNXRUNTIME))} or newer (its GroupQueryAttention with an "
                       f"attention bias); this is {onnxruntime.__version__}: upgrade onnxruntime, or export again "
                       f"without --static-cache")


# More onnxruntime threads than this only spin: four per core is already far past any gain.
MAX_THREADS = 4 * (os.cpu_count() or 1)


def check_whole_number(name: str, value, low: int = 0, high: int | None = None) -> None:
    """Refuse anything but an int (bools too) from `low` to `high`, naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise GenError(f"{name} must be a whole number {bounds}, got {value!r}")


def resolve_provider(provider: str | None) -> list[str]:
    """The providers list for a session: the chosen one first, CPU as the fallback.

    `provider` is an onnxruntime name ("CUDAExecutionProvider") or its short form
    ("cuda", any case); it must be one that this onnxruntime reports available.
    """
    if provider is None:
        return [CPU_PROVIDER]
    available = onnxruntime.get_available_providers()
    wanted = provider.strip().lower().removesuffix("executionprovider")
    for name in available:
        if name.lower().removesuffix("executionprovider") == wanted:
            return [name] if name == CPU_PROVIDER else [name, CPU_PROVIDER]
    raise GenError(
        f"execution provider {provider!r} is not available in this onnxruntime "
        f"({onnxruntime.__version__}); available: {', '.join(available)}"
    )


class OnnxModel(BackendBase):
    """A gen ONNX export loaded in onnxruntime: a generation backend and a text API."""

    def __init__(self, model_path: str | os.PathLike, provider: str | None = None, threads: int | None = None):
        if threads is not None:
            check_whole_number("threads", threads, 1, MAX_THREADS)
        self.path = os.fspath(model_path)
        self.artifact = read_artifact(self.path)  # a wrong file fails here, in one line
        if self.artifact.cache_capacity:
            _check_onnxruntime_for_static_cache(self.path)
        self.session = _open_session(self.path, resolve_provider(provider), threads or 1)
        self.tokenizer = tokenizer_from_dict(self.artifact.tokenizer)
        model = self.artifact.model
        self.block_size = self.artifact.block_size
        self.vocab_size = model["vocab_size"]
        self.cache_kind = self.artifact.cache_kind  # "kv", "state" or None (the whole window each step)
        self.uses_cache = self.cache_kind is not None
        self._cache_dims = (model["n_head"], model["head_size"])
        self._state_shapes = self.artifact.state_shapes  # name -> shape without the batch ({} but for a state)
        if self._state_shapes:
            self._past_names = past_state_names(self._state_shapes)
            self._output_names = [LOGITS, *present_state_names(self._state_shapes)]
        else:
            self._past_names = past_names(model["n_layer"])  # n_layer 0: no KV cache
            self._output_names = [LOGITS, *present_names(model["n_layer"])]
        self.capacity = self.artifact.cache_capacity  # None: the plain, growing cache
        self.has_attention = self.artifact.has_attention and self.cache_kind == "kv"
        self._attention_names = attention_names(model["n_layer"]) if self.has_attention else []
        self._check_graph_against_metadata()

    def _check_graph_against_metadata(self) -> None:
        """Refuse a file whose metadata does not describe its graph (altered, or foreign),
        before anything is generated: the inputs and outputs it names, the cache's heads
        and head size (or the state's shapes), the vocabulary and the tokenizer's, and one
        step at the last position of the context (a block_size larger than the model's
        fails there)."""

        def mismatch(problem: str) -> GenError:
            return GenError(f"{self.path} does not match its gen.model metadata ({problem}): the file was "
                            f"altered or is not from gen export; export it again")

        inputs = {node.name: node.shape for node in self.session.get_inputs()}
        outputs = {node.name: node.shape for node in self.session.get_outputs()}
        expected_inputs = [INPUT_IDS, ATTENTION_MASK, *([CACHE_POSITION] if self.capacity else []),
                           *self._past_names]
        expected_outputs = self._output_names + self._attention_names
        if set(inputs) != set(expected_inputs) or set(outputs) != set(expected_outputs):
            lacking = [name for name in expected_inputs + expected_outputs if name not in {**inputs, **outputs}]
            extra = sorted(set(inputs) - set(expected_inputs)) + sorted(set(outputs) - set(expected_outputs))
            raise mismatch(", ".join(filter(None, [lacking and "the graph lacks " + ", ".join(lacking),
                                                   extra and "the graph also has " + ", ".join(extra)])))
        n_head, head_size = self._cache_dims
        # (Dimensions the graph leaves symbolic are checked by the step below.)
        if self._state_shapes:
            for name, shape in zip(self._past_names, self._state_shapes.values()):
                graph_shape = inputs[name][1:]
                if len(graph_shape) != len(shape) or any(isinstance(got, int) and got != want
                                                         for got, want in zip(graph_shape, shape)):
                    raise mismatch(f"{name} has shape {graph_shape} after the batch, the metadata {list(shape)}")
        else:
            for name in self._past_names:
                _, heads, _, size = inputs[name]
                if any(isinstance(got, int) and got != want for got, want in ((heads, n_head), (size, head_size))):
                    raise mismatch(f"{name} has {heads} heads of size {size}, the metadata {n_head} of {head_size}")
        if isinstance(outputs[LOGITS][-1], int) and outputs[LOGITS][-1] != self.vocab_size:
            raise mismatch(f"the graph's logits have {outputs[LOGITS][-1]} entries, the metadata's vocabulary "
                           f"{self.vocab_size}")
        if self.tokenizer.vocab_size > self.vocab_size:
            raise mismatch(f"the tokenizer has {self.tokenizer.vocab_size} tokens, the model {self.vocab_size}")
        # One step at position block_size - 1: a past of block_size - 1 (cached models) or a
        # whole window (the others). Small: one query, or no attention at all.
        length = self.block_size - 1 if self.uses_cache else 0
        past = self.empty_past(1) if self.capacity or self._state_shapes else \
            [np.zeros((1, n_head, length, head_size), dtype=np.float32)] * len(self._past_names)
        tokens = 1 if self.uses_cache else self.block_size
        ids = np.zeros((1, tokens), dtype=np.int64)
        try:
            logits, presents = self.forward(ids, np.ones((1, length + tokens), dtype=np.int64), past)
        except Exception as error:  # onnxruntime's own exception types
            raise mismatch(f"a step at position {self.block_size - 1} fails: {first_line(error)[:200]}") from None
        if logits.shape != (1, tokens, self.vocab_size):
            raise mismatch(f"a step gives logits of shape {logits.shape}, not (1, {tokens}, {self.vocab_size})")
        if self._state_shapes:  # the state a step gives must be the one the next step takes
            for name, array, shape in zip(self._output_names[1:], presents, self._state_shapes.values()):
                if array.shape != (1, *shape):
                    raise mismatch(f"{name} has shape {array.shape}, not (1, {', '.join(map(str, shape))})")

    # --- the Backend protocol of gen.core.generation (step and logits from BackendBase) ---

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, past):
        """(B, T) ids, (B, P+T) mask, past or None -> ((B, T, vocab) logits, past)."""
        if past is None:
            past = self.empty_past(input_ids.shape[0])
        if self.capacity:
            return past.step(input_ids, attention_mask), past
        feed = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        feed.update(zip(self._past_names, past))
        outputs = self.session.run(self._output_names, feed)
        return outputs[0], outputs[1:]

    def empty_past(self, batch_size: int):
        """An empty KV cache for a prefill: zero-length arrays (an empty list for a model
        without a cache), or for a fixed-capacity export a new CapacityCache; for a state
        model its state before the first token, zeros of (batch_size, *shape) per tensor."""
        if self.capacity:
            return CapacityCache(self, batch_size)
        if self._state_shapes:
            return [np.zeros((batch_size, *shape), dtype=np.float32) for shape in self._state_shapes.values()]
        n_head, head_size = self._cache_dims
        empty = np.zeros((batch_size, n_head, 0, head_size), dtype=np.float32)
        return [empty] * len(self._past_names)

    def attention(self, token_ids: Sequence[int]) -> np.ndarray:
        """Every layer's attention weights over `token_ids` (at most block_size of them), run
        once through the graph as one prefill: (n_layer, n_head, T, T) float32, row t the
        weights query t gave keys 0..t (zero above the diagonal). Needs an export made with
        `gen export --attention` (`has_attention`); for inspecting, not for decoding."""
        if not self.has_attention:
            raise GenError(f"{self.path} has no attention outputs; export it again with gen export --attention")
        ids = np.asarray(token_ids, dtype=np.int64).reshape(1, -1)
        if not 1 <= ids.shape[1] <= self.block_size:
            raise GenError(f"attention takes 1 to {self.block_size} tokens (block_size), got {ids.shape[1]}")
        feed = {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)}
        feed.update(zip(self._past_names, self.empty_past(1)))
        return np.concatenate(self.session.run(self._attention_names, feed))  # n_layer x (1, H, T, T)

    # --- text ------------------------------------------------------------------------
    #
    # The arguments after the prompt(s) are those of gen.core.generation.GenerationOptions
    # (which says what each means); `options=GenerationOptions(...)` may give them instead.

    def stream(
        self,
        prompt: str,
        sampler: Sampler | str | Sequence[str] | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        seed: int | None = None,
        stop: Sequence[str] = (),
        rng: np.random.Generator | None = None,
        logit_bias: Mapping[int, float] | None = None,
        constraint: Constraint | tuple[str, str] | None = None,
        options: GenerationOptions | None = None,
    ) -> Iterator[str]:
        """Yield the text that follows `prompt`, piece by piece, as it is generated."""
        if not isinstance(prompt, str):
            raise GenError("stream() takes one prompt; use generate() for a list of prompts")
        options = _options(options, GenerationOptions(sampler, max_new_tokens, seed, stop, rng, logit_bias, constraint))
        for step in self._steps([prompt], options):
            if step.pieces[0]:
                yield step.pieces[0]

    def tokens(
        self,
        prompt: str,
        sampler: Sampler | str | Sequence[str] | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        seed: int | None = None,
        stop: Sequence[str] = (),
        rng: np.random.Generator | None = None,
        logit_bias: Mapping[int, float] | None = None,
        constraint: Constraint | tuple[str, str] | None = None,
        logprobs: int = 5,
        options: GenerationOptions | None = None,
    ) -> Iterator[TokenChoice]:
        """Yield each token generated after `prompt` with its log-probabilities: under the
        model, under what the sampler drew from, and the `logprobs` most likely alternatives."""
        if not isinstance(prompt, str):
            raise GenError("tokens() takes one prompt")
        check_whole_number("logprobs", logprobs)
        options = _options(options, GenerationOptions(sampler, max_new_tokens, seed, stop, rng, logit_bias, constraint))
        for step in self._steps([prompt], options, logprobs):
            if step.tokens and step.tokens[0] is not None:
                yield step.tokens[0]

    def generate(
        self,
        prompts: Sequence[str],
        sampler: Sampler | str | Sequence[str] | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        seed: int | None = None,
        stop: Sequence[str] = (),
        rng: np.random.Generator | None = None,
        logit_bias: Mapping[int, float] | None = None,
        constraint: Constraint | tuple[str, str] | None = None,
        options: GenerationOptions | None = None,
    ) -> list[str]:
        """The text that follows each prompt, generated as one left-padded batch.

        Under greedy sampling each text equals what its prompt gets alone.
        """
        if isinstance(prompts, str):
            raise GenError("generate() takes a list of prompts; wrap a single prompt in a list or use stream()")
        options = _options(options, GenerationOptions(sampler, max_new_tokens, seed, stop, rng, logit_bias, constraint))
        prompts = list(prompts)
        if not prompts:
            return []
        texts: list[list[str]] = [[] for _ in prompts]
        for step in self._steps(prompts, options):
            for text, piece in zip(texts, step.pieces):
                text.append(piece)
        return ["".join(text) for text in texts]

    def _steps(self, prompts: list[str], options: GenerationOptions, logprobs: int | None = None) -> Iterator[TextStep]:
        check_whole_number("max_new_tokens", options.max_new_tokens)
        if options.seed is not None:
            check_whole_number("seed", options.seed)
        stop = [options.stop] if isinstance(options.stop, str) else options.stop
        chain = Sampling.of(options.sampler, options.logit_bias).new()
        rng = options.rng if options.rng is not None else np.random.default_rng(options.seed)
        constraint = Constraint.of(options.constraint)
        compiled = constraint.compile(self.tokenizer, self.vocab_size) if constraint is not None else None
        return generate_text(self, self.tokenizer, prompts, chain, rng, options.max_new_tokens, stop, logprobs,
                             compiled)


def _options(given: GenerationOptions | None, from_arguments: GenerationOptions) -> GenerationOptions:
    """`options=` when given, else the separate arguments; both at once is ambiguous."""
    if given is None:
        return from_arguments
    if from_arguments != GenerationOptions():
        raise GenError("give the generation arguments either one by one or as options=GenerationOptions(...), "
                       "not both")
    return given


class CapacityCache:
    """The KV cache of one generation with a fixed-capacity export (`gen export --static-cache`).

    onnxruntime-genai's way: one buffer per cache tensor, of the capacity's positions,
    bound with IO binding as both the graph's past input and its present output, so the
    graph writes each step's keys and values into it in place. Everything else a decode
    step moves is bound once too: numpy arrays for the new ids (B, 1), the mask over every
    slot, the slot they go to and the logits (B, 1, vocab), each wrapped in an OrtValue
    that shares its memory. A decode step writes the ids, the mask's columns and the slot
    into those arrays, runs, and copies the logits out (the next step overwrites them); it
    allocates and binds nothing. A prefill (several new tokens) binds its own ids and
    logits, and the next decode step binds the one-token arrays back.
    Each generation has its own buffers and binding, so threads never share one.
    """

    def __init__(self, generator: "OnnxModel", batch_size: int):
        n_head, head_size = generator._cache_dims
        self.session = generator.session
        self.capacity = generator.capacity
        self.buffers = [onnxruntime.OrtValue.ortvalue_from_numpy(
            np.zeros((batch_size, n_head, self.capacity, head_size), dtype=np.float32))
            for _ in generator._past_names]
        self.binding = self.session.io_binding()
        for past, present, buffer in zip(generator._past_names, generator._output_names[1:], self.buffers):
            self.binding.bind_ortvalue_input(past, buffer)
            self.binding.bind_ortvalue_output(present, buffer)
        self.mask = np.zeros((batch_size, self.capacity), dtype=np.int64)  # over every slot
        self.position = np.zeros(1, dtype=np.int64)  # the slot of the first new token
        self.next_ids = np.zeros((batch_size, 1), dtype=np.int64)  # a decode step's ids
        self.next_logits = np.zeros((batch_size, 1, generator.vocab_size), dtype=np.float32)  # and its logits
        # The OrtValues share the arrays' memory; they are kept here so that the arrays outlive every run.
        self._bound = {name: onnxruntime.OrtValue.ortvalue_from_numpy(array) for name, array in
                       ((ATTENTION_MASK, self.mask), (CACHE_POSITION, self.position), (INPUT_IDS, self.next_ids),
                        (LOGITS, self.next_logits))}
        self.binding.bind_ortvalue_input(ATTENTION_MASK, self._bound[ATTENTION_MASK])
        self.binding.bind_ortvalue_input(CACHE_POSITION, self._bound[CACHE_POSITION])
        self._bind_decode_step()

    def _bind_decode_step(self) -> None:
        self.binding.bind_ortvalue_input(INPUT_IDS, self._bound[INPUT_IDS])
        self.binding.bind_ortvalue_output(LOGITS, self._bound[LOGITS])
        self._decode_bound = True

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Run the graph on the new ids (B, T) with the mask of the past and them (B, P+T);
        the buffers take the new keys and values at slots P..P+T-1. Returns the logits (B, T, vocab)."""
        filled = attention_mask.shape[1]
        new = input_ids.shape[1]
        if filled > self.capacity:
            raise GenError(f"a fixed-capacity cache holds {self.capacity} positions, not {filled}")
        self.mask[:, :filled] = attention_mask
        self.mask[:, filled:] = 0
        self.position[0] = filled - new
        if new == 1:
            if not self._decode_bound:
                self._bind_decode_step()
            self.next_ids[:] = input_ids
            self.session.run_with_iobinding(self.binding)
            return self.next_logits.copy()
        if self.position[0] and len(input_ids) > 1:
            # onnxruntime's GroupQueryAttention takes several new tokens after a past for one row
            # only; a batch's (gen export's verification feeds them) go one token a step.
            return np.concatenate([self.step(input_ids[:, t:t + 1], attention_mask[:, :filled - new + t + 1])
                                   for t in range(new)], axis=1)
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        logits = np.empty((*ids.shape, self.next_logits.shape[-1]), dtype=np.float32)
        self.binding.bind_cpu_input(INPUT_IDS, ids)
        self.binding.bind_ortvalue_output(LOGITS, onnxruntime.OrtValue.ortvalue_from_numpy(logits))
        self._decode_bound = False
        self.session.run_with_iobinding(self.binding)
        return logits

    def arrays(self, length: int) -> list[np.ndarray]:
        """The cache's first `length` positions as numpy arrays (for verification)."""
        return [buffer.numpy()[:, :, :length] for buffer in self.buffers]


def _open_session(path: str, providers: list[str], threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Fatal only: onnxruntime would print its errors to the terminal before gen says the same in
    # one line (gen quotes the first line of the exception it raises); the output is the generated text.
    options.log_severity_level = 4
    try:
        session = onnxruntime.InferenceSession(path, options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types
        raise GenError(f"onnxruntime cannot load {path}: {first_line(error)}") from None
    if session.get_providers()[0] != providers[0]:
        raise GenError(
            f"onnxruntime could not start {providers[0]} for {path} (it fell back to "
            f"{session.get_providers()[0]}); check the provider's drivers and libraries"
        )
    return session

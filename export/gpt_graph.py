"""The GPT's decode graph, written node by node with onnxruntime's fused operators.

torch's exporter translates the GPT operator by operator: per layer about 23 nodes
(reshapes and transposes around the attention, a concatenation per cache tensor, a
separate residual Add before each LayerNorm). A decode step of a small model is a
chain of tiny operators, where each node costs a few microseconds of overhead, so
this module writes the same computation the way onnxruntime-genai's model builder
does, with the fused kernels onnxruntime has for it (domain com.microsoft):

    per layer:  MatMul(qkv) -> Split -> MultiHeadAttention(past -> present)
                -> MatMul(proj) -> SkipLayerNormalization (residual + LayerNorm)
                -> MatMul(fc) -> Gelu (exact or tanh) -> MatMul(proj) -> SkipLayerNormalization

nine nodes a layer. The graph keeps gen's ONNX contract exactly (input_ids,
attention_mask, past_key_values.{i}.key/.value in, logits and present.{i}.* out,
positions from the mask), so the runtime and other consumers see no difference, and
`gen export` verifies it against torch like any export. It runs on onnxruntime only
(the fused operators are its own); `gen export --portable` writes the operator-by-
operator graph of torch's exporter instead.

With a fixed-capacity cache (`gen export --static-cache`), the Split and the
MultiHeadAttention become one GroupQueryAttention that writes the new keys and values
into preallocated cache buffers in place, eight nodes a layer (see build_gpt_graph).

Two things are computed once per step for every layer: the positions (from the
mask, as GPT.forward_cached computes them) and the attention bias (0 where a query
may look, the lowest float32 elsewhere: causal, and not at left padding).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gen.core.errors import GenError
from gen.export.attention import LOWEST_FLOAT32
from gen.runtime.artifact import (
    ATTENTION_MASK,
    CACHE_POSITION,
    INPUT_IDS,
    LOGITS,
    attention_names,
    past_names,
    present_names,
)

OPSET = 20  # Gelu is a standard operator from opset 20
MICROSOFT = "com.microsoft"


class GraphBuilder:
    """Nodes and initializers, with names made unique by a counter."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))  # keeps 0-d scalars
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "",
           **attributes) -> list[str]:
        """A node with `outputs` new names, or with the given output names (the graph's own)."""
        names = outputs if isinstance(outputs, list) else [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(op_type), domain=domain,
                                           **attributes))
        return names

    def one(self, op_type: str, inputs: list[str], domain: str = "", **attributes) -> str:
        return self.op(op_type, inputs, 1, domain, **attributes)[0]


def _weight(tensor) -> np.ndarray:
    return tensor.detach().to("cpu").float().numpy()


def build_gpt_graph(model, capacity: int | None = None, attention: bool = False) -> onnx.ModelProto:
    """The decode graph of a gen GPT (gen.plugins.gpt), with its weights.

    With `capacity`, the graph has a fixed-capacity cache instead: cache tensors of
    `capacity` positions, an input `cache_position` (P, the slot the new tokens go to),
    an attention mask over all `capacity` slots, and present tensors that are the past
    ones with the new keys and values written in at slots P..P+T-1. Its attention is
    onnxruntime's GroupQueryAttention (with as many key/value heads as query heads, so
    plain multi-head attention), which takes the packed query-key-value projection as it
    is, writes the new keys and values into the cache in place when the runtime binds
    each present output to its past input's buffer, and attends over the P+T filled
    slots only. It takes several new tokens after a past for a batch of one row only;
    gen.runtime.onnx_model.CapacityCache feeds a larger batch's one at a time.

    With `attention` (`gen export --attention`; not with a capacity), every layer's
    attention weights are extra outputs `attention.{i}`, (B, n_head, T, P+T): the softmax
    of the scaled query-key products under the same bias, which MultiHeadAttention
    computes inside itself and does not hand out. They are computed beside it, for
    inspecting; without `attention` the graph has none of these nodes.
    """
    static = capacity is not None
    if static and attention:
        raise GenError("attention outputs (--attention) are written for the growing cache only; leave out "
                       "--static-cache")
    config = model.config
    n_layer, n_head, n_embd = config.n_layer, config.n_head, config.n_embd
    head_size = n_embd // n_head
    if static and head_size % 8:
        raise GenError(f"a fixed-capacity cache (--static-cache) needs a head size (n_embd / n_head) that is a "
                       f"multiple of 8 (onnxruntime's GroupQueryAttention); this model's is {head_size}: leave out "
                       f"--static-cache")
    transformer = model.transformer
    g = GraphBuilder()
    zero_bias = np.zeros(n_embd, dtype=np.float32)  # for LayerNorms without a bias
    # The MLP's GELU: the standard Gelu is exact by default and takes nn.GELU's
    # approximate="tanh" as it is (GPT-2's activation); the exact one's graph stays as it was.
    gelu_options = {"approximate": "tanh"} if transformer.h[0].mlp.gelu.approximate == "tanh" else {}

    def linear(x: str, layer, prefix: str) -> str:
        y = g.one("MatMul", [x, g.constant(f"{prefix}.weight_t", _weight(layer.weight).T)])
        if layer.bias is not None:
            y = g.one("Add", [y, g.constant(f"{prefix}.bias", _weight(layer.bias))])
        return y

    def norm_parameters(norm, prefix: str) -> list[str]:
        beta = _weight(norm.bias) if norm.bias is not None else zero_bias
        return [g.constant(f"{prefix}.weight", _weight(norm.weight)), g.constant(f"{prefix}.bias", beta)]

    def skip_norm(x: str, residual: str, norm, prefix: str) -> tuple[str, str]:
        """LayerNorm(x + residual), and x + residual itself (the new residual stream)."""
        normed, _, _, summed = g.op("SkipLayerNormalization", [x, residual, *norm_parameters(norm, prefix)],
                                    outputs=4, domain=MICROSOFT, epsilon=norm.eps)
        return normed, summed

    # Shapes: T new tokens, P cached ones (or, with a fixed capacity, P filled slots).
    zero, one = g.constant("zero", np.array(0, np.int64)), g.constant("one", np.array(1, np.int64))
    axis_one = g.constant("axis_one", np.array([1], np.int64))
    axes_zero = g.constant("axes_zero", np.array([0], np.int64))
    length = g.one("Gather", [g.one("Shape", [INPUT_IDS]), one], axis=0)  # T
    if static:
        past_length = g.one("Squeeze", [CACHE_POSITION, axes_zero])  # P
    else:
        past_length = g.one("Gather", [g.one("Shape", [past_names(n_layer)[0]]),
                                       g.constant("two", np.array(2, np.int64))], axis=0)  # P
    total = g.one("Add", [past_length, length])  # P + T

    # Positions count real tokens only: cumsum(mask) - 1, at least 0, at the T new tokens.
    positions = g.one("Sub", [g.one("CumSum", [ATTENTION_MASK, one]), one])  # CumSum along axis 1
    positions = g.one("Max", [positions, zero])
    first_new = g.one("Unsqueeze", [past_length, axes_zero])
    positions = g.one("Slice", [positions, first_new, g.one("Unsqueeze", [total, axes_zero]), axis_one])

    # The attention bias (B, 1, T, keys): a query at absolute index P+t sees keys up to it
    # (causal, aligned bottom-right) that are real tokens, and always itself. The keys are
    # the P+T of the past and the new tokens (with a fixed capacity: the filled slots).
    key_at = g.one("Range", [zero, total, one])
    query_at = g.one("Add", [g.one("Range", [zero, length, one]), past_length])  # (T,)
    keys_row = g.one("Unsqueeze", [key_at, axes_zero])  # (1, keys)
    queries_column = g.one("Unsqueeze", [query_at, axis_one])  # (T, 1)
    causal = g.one("LessOrEqual", [keys_row, queries_column])  # (T, keys)
    itself = g.one("Equal", [keys_row, queries_column])  # (T, keys)
    mask = ATTENTION_MASK
    if static:  # the mask covers every slot; the keys are the filled ones
        mask = g.one("Slice", [mask, axes_zero, g.one("Unsqueeze", [total, axes_zero]), axis_one])  # [:, 0:P+T]
    real = g.one("Cast", [g.one("Unsqueeze", [mask, axis_one])], to=TensorProto.BOOL)  # (B, 1, keys)
    allowed = g.one("And", [causal, g.one("Or", [real, itself])])  # (B, T, keys)
    bias = g.one("Where", [allowed, g.constant("no_bias", np.array(0.0, np.float32)),
                           g.constant("lowest", np.array(LOWEST_FLOAT32, np.float32))])
    bias = g.one("Unsqueeze", [bias, axis_one])  # (B, 1, T, keys)
    # With a fixed capacity, GroupQueryAttention reads how many slots are filled: P+T-1 per row
    # (the last filled slot), and P+T itself.
    if static:
        batch_size = g.one("Unsqueeze", [g.one("Gather", [g.one("Shape", [INPUT_IDS]), zero], axis=0), axes_zero])
        last_slot = g.one("Cast", [g.one("Sub", [total, one])], to=TensorProto.INT32)
        last_slots = g.one("Expand", [last_slot, batch_size])  # (B,)
        filled = g.one("Cast", [total], to=TensorProto.INT32)

    # Embeddings, then the blocks. The first LayerNorm has no residual to add yet.
    tokens = g.one("Gather", [g.constant("wte", _weight(transformer.wte.weight)), INPUT_IDS])
    where = g.one("Gather", [g.constant("wpe", _weight(transformer.wpe.weight)), positions])
    residual = g.one("Add", [tokens, where])  # (B, T, C)
    first = transformer.h[0].ln_1
    normed = g.one("LayerNormalization", [residual, *norm_parameters(first, "h.0.ln_1")], axis=-1,
                   epsilon=first.eps)
    split = None if static else g.constant("qkv_split", np.array([n_embd] * 3, np.int64))
    attention_inputs = []  # each layer's (query, present key), for the attention outputs
    for i, block in enumerate(transformer.h):
        qkv = linear(normed, block.attn.c_attn, f"h.{i}.attn.c_attn")
        past_key, past_value = past_names(n_layer)[2 * i:2 * i + 2]
        present_key, present_value = present_names(n_layer)[2 * i:2 * i + 2]
        attended = g.name("attended")
        if static:
            # The packed query, key and value as they come; the new keys and values go to slots
            # P..P+T-1 of the cache (in place, when the runtime binds present to past), and the
            # queries attend over the P+T filled slots only, causally, the bias masking padding.
            g.op("GroupQueryAttention", [qkv, "", "", past_key, past_value, last_slots, filled, "", "", "", bias],
                 [attended, present_key, present_value], MICROSOFT, num_heads=n_head, kv_num_heads=n_head)
        else:
            query, key, value = g.op("Split", [qkv, split], outputs=3, axis=-1)
            g.op("MultiHeadAttention", [query, key, value, "", "", bias, past_key, past_value],
                 [attended, present_key, present_value], MICROSOFT, num_heads=n_head)
            attention_inputs.append((query, present_key))
        projected = linear(attended, block.attn.c_proj, f"h.{i}.attn.c_proj")
        normed, residual = skip_norm(projected, residual, block.ln_2, f"h.{i}.ln_2")
        hidden = g.one("Gelu", [linear(normed, block.mlp.c_fc, f"h.{i}.mlp.c_fc")], **gelu_options)
        projected = linear(hidden, block.mlp.c_proj, f"h.{i}.mlp.c_proj")
        following = transformer.h[i + 1].ln_1 if i + 1 < n_layer else transformer.ln_f
        prefix = f"h.{i + 1}.ln_1" if i + 1 < n_layer else "ln_f"
        normed, residual = skip_norm(projected, residual, following, prefix)
    # The head is tied to the token embedding (GPT), so the same weights, transposed.
    g.op("MatMul", [normed, g.constant("lm_head.weight_t", _weight(model.lm_head.weight).T)], [LOGITS])
    if attention:
        # Written after everything else, so that the graph before them is the default one, node for node.
        query_shape = g.constant("query_shape", np.array([0, 0, n_head, head_size], np.int64))
        scale = g.constant("attention_scale", np.array(1.0 / np.sqrt(head_size), np.float32))
        for name, (query, present_key) in zip(attention_names(n_layer), attention_inputs):
            # softmax(q @ k^T / sqrt(hs) + bias), the weights MultiHeadAttention gives the values
            query_heads = g.one("Transpose", [g.one("Reshape", [query, query_shape])], perm=[0, 2, 1, 3])  # (B, N, T, H)
            keys_t = g.one("Transpose", [present_key], perm=[0, 1, 3, 2])  # (B, N, H, P+T)
            scores = g.one("Mul", [g.one("MatMul", [query_heads, keys_t]), scale])  # (B, N, T, P+T)
            g.op("Softmax", [g.one("Add", [scores, bias])], [name], axis=-1)

    batch, sequence = "batch", "sequence"
    past, total_sequence = (capacity, capacity) if static else ("past_sequence", "total_sequence")
    cache = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, n_head, past, head_size])
             for name in past_names(n_layer)]
    presents = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, n_head, total_sequence, head_size])
                for name in present_names(n_layer)]
    position_input = [helper.make_tensor_value_info(CACHE_POSITION, TensorProto.INT64, [1])] if static else []
    weights = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, n_head, sequence, total_sequence])
               for name in attention_names(n_layer)] if attention else []
    graph = helper.make_graph(
        g.nodes, "gen_gpt_decoder",
        [helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, [batch, sequence]),
         helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, [batch, total_sequence]),
         *position_input, *cache],
        [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [batch, sequence, config.vocab_size]), *presents,
         *weights],
        initializer=g.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MICROSOFT, 1)]
    # The oldest IR version that carries these opsets, not the installed onnx's newest:
    # an onnxruntime a release behind onnx refuses a newer IR version it would otherwise run.
    ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version, producer_name="gen")

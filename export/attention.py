"""The ONNX translation of `scaled_dot_product_attention` that `gen export` uses.

torch's default translation (onnxscript's torch_lib) transposes the key with a
Reshape / Transpose / Reshape chain and guards the softmax against NaN with
IsNaN + Where. In a decode step at batch 32 that chain copies the whole key cache
of every layer once more, and in a batch-1 step its extra nodes are a quarter of
the graph. This translation writes the textbook formula instead:

    softmax(Q @ transpose(K) * scale, masked where the mask is False) @ V

onnxruntime fuses `MatMul(Q, Transpose(K))` and the scale into one FusedMatMul that
reads K transposed in place. A boolean mask fills with the lowest float32 (as
torch_lib does) rather than -inf, so the softmax never sees a row of -inf and
needs no NaN guard. (A query with every key masked averages all values here, as
with torch_lib's translation, where torch returns zeros; gen's models never mask a
query's own key, and verification would catch a model that did.)
Anything this translation does not cover (dropout, grouped-query attention, other
than 4-D float32 inputs) is handed to torch_lib's own translation.
"""
from __future__ import annotations

import math

import torch
from onnxscript import ir
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.ops.nn import aten_scaled_dot_product_attention

LOWEST_FLOAT32 = float(torch.finfo(torch.float32).min)


def scaled_dot_product_attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
):
    """ONNX for aten::scaled_dot_product_attention on (batch, heads, length, head size) tensors."""
    four_dimensional = all(tensor.shape is not None and len(tensor.shape) == 4 for tensor in (query, key, value))
    if dropout_p != 0.0 or enable_gqa or query.dtype != ir.DataType.FLOAT or not four_dimensional:
        return aten_scaled_dot_product_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
        )
    if scale is None:
        head_size = query.shape[-1]
        if not isinstance(head_size, int):  # a symbolic head size: let torch_lib compute it
            return aten_scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale)
        scale = 1.0 / math.sqrt(head_size)
    scores = op.Mul(
        op.MatMul(query, op.Transpose(key, perm=[0, 1, 3, 2])), op.Constant(value_float=scale)
    )
    if is_causal:
        # torch aligns is_causal's triangle top-left: query i sees keys 0..i.
        query_at = op.Range(0, op.Squeeze(op.Slice(op.Shape(query), [-2], [-1])), 1)
        key_at = op.Range(0, op.Squeeze(op.Slice(op.Shape(key), [-2], [-1])), 1)
        attn_mask = op.LessOrEqual(op.Unsqueeze(key_at, [0]), op.Unsqueeze(query_at, [1]))
    if attn_mask is not None:
        if is_causal or attn_mask.dtype == ir.DataType.BOOL:
            scores = op.Where(attn_mask, scores, op.Constant(value_float=LOWEST_FLOAT32))
        else:
            scores = op.Add(scores, attn_mask)
    return op.MatMul(op.Softmax(scores, axis=-1), value)


TRANSLATIONS = {torch.ops.aten.scaled_dot_product_attention.default: scaled_dot_product_attention}

"""Quantization of an export (int8 or int4 weights), and what it costs in validation loss.

- int8: onnxruntime's `quantize_dynamic` stores the MatMul weights (and the
  embedding table) as int8 with a scale per tensor and quantizes activations on the
  fly: the file shrinks about 3.5x and nothing needs calibration data.
- int4: onnxruntime's MatMulNBits weight-only quantization stores the MatMul
  weights as 4-bit integers in blocks of INT4_BLOCK_SIZE with a scale each, and
  computes with int8 activations (accuracy level 4). A decode step of a model larger
  than the CPU's cache reads every weight once, so a weight file 7x smaller is most of
  the speed.

Nothing needs calibration data. The cost is measured, not assumed: both files score the
same validation tokens (the checkpoint's own validation split when its training data is
at hand) with the exact loss that `gen eval` uses.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Sequence

import onnx

from gen.core.errors import GenError, first_line
from gen.core.scoring import exact_loss
from gen.runtime.artifact import FORMAT_KEY

# Enough text for a loss to three decimals, little enough to score in seconds.
VALIDATION_TOKENS = 20_000


def validation_ids_of(checkpoint) -> tuple[Sequence[int] | None, str]:
    """Up to VALIDATION_TOKENS validation token ids of the checkpoint's training data,
    and where they come from; (None, the reason) when the data cannot be found."""
    from gen.core.data import load_dataset

    data = checkpoint.train_args.get("data")
    if not data:
        return None, "the checkpoint does not record its training data"
    try:
        dataset = load_dataset(data, tokenizer_document=checkpoint.tokenizer_document, progress=False)
    except GenError as error:
        return None, f"the training data {data!r} is not available ({error})"
    return dataset.val_ids[:VALIDATION_TOKENS].tolist(), f"the validation split of {data!r}"


QUANTIZATIONS = ("int8", "int4")
# int4's block size, chosen by measurement (benchmarks/quantized_weights.py, 2026-12-07): on
# nanoGPT's CPU and GPU shapes blocks of 128 decode 9-15% faster at batch 1 than blocks of 32
# and 5-8% faster at batch 32, for +0.001 nats of validation loss or less beside them. A
# model whose weights' rows do not divide into blocks of 128 (n_embd 96, say) gets the
# largest smaller block that divides them all, since a padded block stores its padding.
INT4_BLOCK_SIZE = 128


def int4_block_size(model: onnx.ModelProto) -> int:
    """INT4_BLOCK_SIZE, or the largest of 64, 32 and 16 that divides the rows (K) of every
    MatMul weight of `model` (16, padded, when none does)."""
    weights = {tensor.name: tensor.dims for tensor in model.graph.initializer}
    rows = {weights[node.input[1]][0] for node in model.graph.node
            if node.op_type == "MatMul" and node.input[1] in weights and len(weights[node.input[1]]) == 2}
    return next((size for size in (INT4_BLOCK_SIZE, 64, 32) if all(k % size == 0 for k in rows)), 16)


def _quantize_weights(fp32_path: Path, out_path: Path, kind: str,
                      say: Callable[[str], None] = lambda message: None) -> None:
    if kind == "int8":
        say("      quantizing to int8 (onnxruntime.quantization: quantize_dynamic, int8 weights)")
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # DefaultTensorType: the fused graph's operators (com.microsoft) have no ONNX
        # shape inference, and their outputs are float32.
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return
    model = onnx.load_model(str(fp32_path))
    block_size = int4_block_size(model)
    say(f"      quantizing to int4 (onnxruntime.quantization: MatMulNBits, 4-bit weights in blocks of {block_size})")
    matmul_nbits(model, out_path, bits=4, block_size=block_size)


def matmul_nbits(model: onnx.ModelProto, out_path: Path, bits: int, block_size: int) -> None:
    """Write `model` with its MatMul weights as onnxruntime's MatMulNBits: `bits`-bit integers in
    blocks of `block_size` with a scale each, symmetric, computed with int8 activations."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    onnx.save_model(quantizer.model.model, str(out_path), save_as_external_data=False)


def quantize(
    fp32_path: Path,
    out_path: Path,
    kind: str,
    validation_ids: Sequence[int] | None = None,
    validation_source: str = "",
    progress: Callable[[str], None] | None = print,
) -> dict:
    """Write the `kind` ("int8" or "int4") version of `fp32_path` at `out_path`; return
    sizes and losses. With `validation_ids`, both files score the first VALIDATION_TOKENS of them."""
    say = progress or (lambda message: None)
    # The quantizers log advice about pre-processing, and each node they touch.
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        _quantize_weights(fp32_path, out_path, kind, say)
    except Exception as error:
        raise GenError(f"{kind} quantization failed: {first_line(error)}") from error
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    quantized = onnx.load_model(str(out_path))
    if not any(entry.key == FORMAT_KEY for entry in quantized.metadata_props):
        raise GenError(f"{kind} quantization dropped the gen metadata; cannot write a usable file")
    onnx.checker.check_model(quantized, full_check=True)

    fp32_size, quantized_size = fp32_path.stat().st_size, out_path.stat().st_size
    report = {"fp32_bytes": fp32_size, f"{kind}_bytes": quantized_size}
    say(f"      size: fp32 {fp32_size / 1e6:.2f} MB -> {kind} {quantized_size / 1e6:.2f} MB "
        f"({fp32_size / quantized_size:.1f}x smaller)")
    if validation_ids is None:
        say(f"      validation loss not measured: {validation_source or 'no validation data given'}")
        return report
    ids = list(validation_ids)[:VALIDATION_TOKENS]
    fp32_loss, tokens = _loss(fp32_path, ids)
    quantized_loss, _ = _loss(out_path, ids)
    report.update({"fp32_loss": fp32_loss, f"{kind}_loss": quantized_loss, "validation_tokens": tokens})
    say(
        f"      validation loss on {tokens:,} tokens of {validation_source}: fp32 {fp32_loss:.4f}, "
        f"{kind} {quantized_loss:.4f} ({quantized_loss - fp32_loss:+.4f} nats/token, "
        f"{(quantized_loss - fp32_loss) / math.log(2):+.4f} bits/token)"
    )
    return report


def _loss(path: Path, ids: Sequence[int]) -> tuple[float, int]:
    from gen.runtime.onnx_model import OnnxModel

    generator = OnnxModel(path)
    loss, tokens = exact_loss(generator.logits, ids, generator.block_size)
    return float(loss), tokens

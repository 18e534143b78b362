"""Dynamic int8 quantization of an export, and what it costs in validation loss.

onnxruntime's `quantize_dynamic` stores the MatMul weights (and the embedding
table) as int8 with a scale per tensor and quantizes activations on the fly, so the
file shrinks about 3.5x and nothing needs calibration data. The cost is measured,
not assumed: both files score the same validation tokens (the checkpoint's own
validation split when its training data is at hand) with the exact loss that
`gen eval` uses.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Sequence

import onnx

from gen.core.errors import GenError
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


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    validation_ids: Sequence[int] | None = None,
    validation_source: str = "",
    progress: Callable[[str], None] | None = print,
) -> dict:
    """Write the int8 version of `fp32_path` at `int8_path`; return sizes and losses.

    With `validation_ids`, both files score the first VALIDATION_TOKENS of them.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    say = progress or (lambda message: None)
    say("      quantizing to int8 (onnxruntime.quantization.quantize_dynamic, int8 weights)")
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # quantize_dynamic logs advice about pre-processing at WARNING
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    except Exception as error:
        raise GenError(f"int8 quantization failed: {str(error).strip().splitlines()[0]}") from error
    finally:
        root_logger.setLevel(level)
    quantized = onnx.load_model(str(int8_path))
    if not any(entry.key == FORMAT_KEY for entry in quantized.metadata_props):
        raise GenError("int8 quantization dropped the gen metadata; cannot write a usable file")
    onnx.checker.check_model(quantized, full_check=True)

    fp32_size, int8_size = fp32_path.stat().st_size, int8_path.stat().st_size
    report = {"fp32_bytes": fp32_size, "int8_bytes": int8_size}
    say(f"      size: fp32 {fp32_size / 1e6:.2f} MB -> int8 {int8_size / 1e6:.2f} MB ({fp32_size / int8_size:.1f}x smaller)")
    if validation_ids is None:
        say(f"      validation loss not measured: {validation_source or 'no validation data given'}")
        return report
    ids = list(validation_ids)[:VALIDATION_TOKENS]
    fp32_loss, tokens = _loss(fp32_path, ids)
    int8_loss, _ = _loss(int8_path, ids)
    report.update(fp32_loss=fp32_loss, int8_loss=int8_loss, validation_tokens=tokens)
    say(
        f"      validation loss on {tokens:,} tokens of {validation_source}: fp32 {fp32_loss:.4f}, "
        f"int8 {int8_loss:.4f} ({int8_loss - fp32_loss:+.4f} nats/token, "
        f"{(int8_loss - fp32_loss) / math.log(2):+.4f} bits/token)"
    )
    return report


def _loss(path: Path, ids: Sequence[int]) -> tuple[float, int]:
    from gen.runtime.generator import Generator

    generator = Generator(path)
    loss, tokens = exact_loss(generator.logits, ids, generator.block_size)
    return float(loss), tokens

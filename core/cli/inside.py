"""`gen attention`: what a model looks at, drawn to a PNG (the `plot` extra).

For a gpt model: every layer's attention weights over a prompt, a grid of heatmaps, a
row of heads per layer; in each, row t holds the weights query t gave the keys 0..t
(the tril-masked softmax of queries and keys), with the prompt's characters on both
axes. From a checkpoint they are computed by torch (GPT.attention_weights); from an
export they are the graph's own outputs, which `gen export --attention` adds (an
export without them gets one line saying so).

For a bigram model, whose whole knowledge is one table, the table itself: row a is the
probability of each next token after token a (the softmax of the model's logits for
the one-token input a), a vocab x vocab heatmap.

`inside_view` returns the numbers (for tests and anyone curious);
`draw_attention` and `draw_table` draw them. matplotlib is imported only when drawing,
torch only when a checkpoint is read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gen.core.cli.plot import check_matplotlib
from gen.core.errors import GenError
from gen.core.files import replace_file_atomically
from gen.core.generation import encode_prompt

DPI = 100
CELL_INCHES = 3  # one head's heatmap
TABLE_INCHES = 10  # the bigram table


@dataclass
class InsideView:
    """What `gen attention` draws: attention weights (gpt) or a next-token table (bigram)."""

    kind: str  # "attention" or "table"
    labels: list[str]  # the prompt's tokens (attention) or the vocabulary (table), as shown
    weights: np.ndarray  # (n_layer, n_head, T, T) attention, or (V, V) probabilities
    model_name: str
    note: str = ""  # e.g. that a long prompt was cut to its last block_size tokens


def shown(text: str) -> str:
    """A token's text as an axis label: whitespace made visible."""
    return text.replace("\n", "\u23ce").replace(" ", "\u2423").replace("\t", "\u21e5") or "\u2205"


def _model_name(backend) -> str:
    checkpoint = getattr(backend, "checkpoint", None)
    return checkpoint.model_name if checkpoint is not None else backend.artifact.model.get("name", "?")


def inside_view(path: str | os.PathLike, prompt: str) -> InsideView:
    """The attention weights of a gpt checkpoint or export over `prompt`, or a bigram's table."""
    from gen.core.cli.backends import is_onnx_path, open_backend

    backend = open_backend(path, device="cpu")
    name = _model_name(backend)
    tokenizer = backend.tokenizer
    if name == "bigram":  # the table needs no prompt: every row is one token's prediction
        vocabulary = np.arange(backend.vocab_size, dtype=np.int64)[:, None]  # (V, 1): one token per row
        logits = backend.logits(vocabulary)[:, 0, :]  # (V, V)
        probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        labels = [shown(tokenizer.decode([i])) for i in range(backend.vocab_size)]
        return InsideView("table", labels, probabilities, name)
    ids = encode_prompt(tokenizer, prompt)
    note = ""
    if len(ids) > backend.block_size:
        note = f"the prompt's last {backend.block_size} of {len(ids)} tokens (block_size)"
        ids = ids[-backend.block_size:]
    if is_onnx_path(path):
        if getattr(backend, "cache_kind", None) == "kv" and not backend.has_attention:
            raise GenError(f"{path} has no attention outputs; export it with them: gen export --attention "
                           f"--checkpoint RUN {Path(path).name}")
        if not backend.has_attention:
            raise GenError(f"gen attention draws a gpt model's attention or a bigram's table; {path} is {name!r}")
        weights = backend.attention(ids)
    else:
        model = backend.model
        if not hasattr(model, "attention_weights"):
            raise GenError(f"gen attention draws a gpt model's attention or a bigram's table; {path} is {name!r}")
        import torch

        weights = model.attention_weights(torch.tensor([ids], dtype=torch.long))[:, 0].numpy()  # (L, H, T, T)
    return InsideView("attention", [shown(tokenizer.decode([i])) for i in ids], weights, name, note)


def attention_size(n_layer: int, n_head: int) -> tuple[int, int]:
    """The attention grid's (width, height) in pixels."""
    return n_head * CELL_INCHES * DPI, n_layer * CELL_INCHES * DPI


def draw_view(view: InsideView, output: str | os.PathLike, title: str = "") -> Path:
    """Draw `view` to the PNG `output` (written atomically); returns its path."""
    check_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    output = Path(output)
    if view.kind == "table":
        figure = Figure(figsize=(TABLE_INCHES, TABLE_INCHES), dpi=DPI)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        image = axes.imshow(view.weights, cmap="Blues", vmin=0, vmax=view.weights.max())
        _label_axes(axes, view.labels, view.labels, 7)
        axes.set_xlabel("next token")
        axes.set_ylabel("this token")
        figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02, label="P(next | this)")
        figure.suptitle(title or f"{view.model_name}: P(next token | this token)", fontsize=12)
    else:
        n_layer, n_head, length, _ = view.weights.shape
        width, height = attention_size(n_layer, n_head)
        figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
        FigureCanvasAgg(figure)
        grid = figure.subplots(n_layer, n_head, squeeze=False)
        font = max(3.0, min(9.0, 180 / length))  # characters stay legible for short prompts, fit for long ones
        for layer in range(n_layer):
            for head in range(n_head):
                axes = grid[layer, head]
                axes.imshow(view.weights[layer, head], cmap="Blues", vmin=0, vmax=1)
                _label_axes(axes, view.labels, view.labels, font)
                axes.set_title(f"layer {layer}, head {head}", fontsize=9)
        figure.suptitle(title or f"{view.model_name}: attention (row: query, column: key it weighs)"
                        + (f"; {view.note}" if view.note else ""), fontsize=11)
    figure.tight_layout()
    with replace_file_atomically(output) as temporary:
        figure.savefig(temporary, format="png")
    return output


def _label_axes(axes, rows: list[str], columns: list[str], font: float) -> None:
    axes.set_xticks(range(len(columns)), columns, fontsize=font, fontfamily="monospace")
    axes.set_yticks(range(len(rows)), rows, fontsize=font, fontfamily="monospace")
    axes.tick_params(length=0, pad=1)

"""Seeing inside the model: attention weights (torch, the export's extra outputs, gen serve's POST
/attention), `gen attention`'s pictures (a gpt's heads, a bigram's table), and what the sampler
chain did to each token's distribution (the completions API's sampled_distribution).

The attention weights are checked against the model's own computation: the test takes the
queries, keys and values the model made in an ordinary forward (hooks on c_attn) and the
attended values it handed on (a hook on c_proj), forms softmax(q k^T / sqrt(hs)) under the
tril mask itself, and finds that these weights times the values are what the model handed on.
"""
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from serve_helpers import running_server
from gen.core.cli.inside import CELL_INCHES, DPI, TABLE_INCHES, attention_size, inside_view
from gen.core.errors import GenError
from gen.core.tokenizer import tokenizer_to_dict
from gen.export.gpt_graph import build_gpt_graph
from gen.export.onnx_export import ExportOptions, export_model
from gen.runtime.artifact import attention_names
from gen.runtime.onnx_model import OnnxModel
from gen.runtime.server import create_app
from cli_helpers import gen, assert_one_line_error

SHAKESPEARE = Path(__file__).resolve().parent / "data" / "tinyshakespeare-excerpt.txt"
TINY = ["--block-size", "32", "--batch-size", "8", "--eval-iters", "1", "--eval-interval", "5", "--max-iters", "10",
        "--device", "cpu"]
TINY_GPT = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32"]
PROMPT = "ROMEO:\nBut soft, what"
pytestmark = pytest.mark.usefixtures("module_cache")


def weights_from_queries_and_keys(model, idx):
    """Each layer's weights formed here from the q, k the model made, and whether they times v
    give what the model handed to c_proj: (n_layer, B, nh, T, T) and the largest difference."""
    made, handed_on = [], []
    hooks = []
    for block in model.transformer.h:
        hooks.append(block.attn.c_attn.register_forward_hook(lambda m, args, out: made.append(out)))
        hooks.append(block.attn.c_proj.register_forward_pre_hook(lambda m, args: handed_on.append(args[0])))
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    B, T = idx.shape
    n_head, C = model.config.n_head, model.config.n_embd
    layers, largest = [], 0.0
    for qkv, attended in zip(made, handed_on):
        q, k, v = (part.view(B, T, n_head, C // n_head).transpose(1, 2) for part in qkv.split(C, dim=2))
        scores = q @ k.transpose(-2, -1) / math.sqrt(C // n_head)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(B, T, C)
        largest = max(largest, (mixed - attended).abs().max().item())
        layers.append(weights)
    return torch.stack(layers), largest


def assert_attention_rows(weights: np.ndarray) -> None:
    """(..., T, T): each row sums to 1 and is exactly zero above the diagonal."""
    length = weights.shape[-1]
    assert np.allclose(weights.sum(axis=-1), 1.0, atol=1e-5)
    assert (weights[..., np.triu_indices(length, k=1)[0], np.triu_indices(length, k=1)[1]] == 0).all()


@pytest.fixture(scope="module")
def attention_export(gpt, tokenizer, tmp_path_factory):
    """conftest's small GPT exported with its attention outputs (and verified against torch)."""
    path = tmp_path_factory.mktemp("attention") / "attention.onnx"
    export_model(gpt, path, tokenizer_document=tokenizer_to_dict("char", tokenizer),
                 options=ExportOptions(attention=True, progress=None))
    return path


def test_the_torch_weights_are_the_ones_the_model_weighs_its_values_with(gpt, tokenizer):
    idx = torch.tensor([tokenizer.encode(PROMPT[:16])])
    expected, mixing_difference = weights_from_queries_and_keys(gpt, idx)
    assert mixing_difference < 1e-5  # these weights times the values are what the model handed on
    got = gpt.attention_weights(idx)
    assert got.shape == (2, 1, 2, 16, 16)
    assert (got - expected).abs().max().item() < 1e-4
    assert_attention_rows(got.numpy())


def test_the_exports_attention_outputs_equal_the_torch_models(gpt, tokenizer, attention_export, small_gpt_onnx):
    model = OnnxModel(attention_export)
    assert model.has_attention
    ids = tokenizer.encode(PROMPT[:16])
    expected, _ = weights_from_queries_and_keys(gpt, torch.tensor([ids]))
    got = model.attention(ids)
    assert got.shape == (2, 2, 16, 16)
    assert np.abs(got - expected[:, 0].numpy()).max() < 1e-4
    assert_attention_rows(got)
    # Its text is the default export's of the same model: the extra outputs change nothing of a step.
    assert model.generate(["ROMEO:"], sampler="top_k:k=5", seed=1, max_new_tokens=40) == \
        OnnxModel(small_gpt_onnx).generate(["ROMEO:"], sampler="top_k:k=5", seed=1, max_new_tokens=40)


def test_the_default_graph_is_the_same_graph_without_the_attention_nodes(gpt):
    default = build_gpt_graph(gpt)
    with_attention = build_gpt_graph(gpt, attention=True)
    assert not any(output.name.startswith("attention.") for output in default.graph.output)
    assert [output.name for output in with_attention.graph.output][-2:] == attention_names(2)
    # Take the attention outputs, their nodes and constants away: the same bytes as the default graph.
    graph = with_attention.graph
    del graph.node[len(default.graph.node):]
    del graph.initializer[len(default.graph.initializer):]
    del graph.output[len(default.graph.output):]
    assert with_attention.SerializeToString() == default.SerializeToString()


def test_attention_is_refused_where_the_graph_cannot_have_it(gpt, tokenizer, small_gpt_onnx, tmp_path):
    with pytest.raises(GenError, match="--static-cache"):
        export_model(gpt, tmp_path / "a.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer),
                     options=ExportOptions(attention=True, static_cache=True, progress=None))
    with pytest.raises(GenError, match="gpt model only, and not with --portable"):
        export_model(gpt, tmp_path / "b.onnx", tokenizer_document=tokenizer_to_dict("char", tokenizer),
                     options=ExportOptions(attention=True, portable=True, progress=None))
    plain = OnnxModel(small_gpt_onnx)
    assert not plain.has_attention
    with pytest.raises(GenError, match="export it again with gen export --attention"):
        plain.attention([1, 2, 3])


# --- gen attention, gen info, gen plot -------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny gpt run and a tiny bigram run (10 steps each), and the gpt's exports with and without attention."""
    work = tmp_path_factory.mktemp("runs")
    corpus = work / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    for model in ("gpt", "bigram"):
        shape = TINY_GPT if model == "gpt" else []
        result = gen("train", "--model", model, "--data", corpus, "--out", work / model, *TINY, *shape)
        assert result.exit_code == 0, result.output
    for name, extra in (("default", []), ("attention", ["--attention"])):
        result = gen("export", work / f"{name}.onnx", "--checkpoint", work / "gpt", *extra)
        assert result.exit_code == 0, result.output
    result = gen("export", work / "bigram.onnx", "--checkpoint", work / "bigram", "--no-verify")
    assert result.exit_code == 0, result.output
    return work


def test_gen_attention_draws_a_grid_of_heads_from_the_checkpoint_and_the_export(runs):
    for source in (["--checkpoint", runs / "gpt"], ["--model", runs / "attention.onnx"]):
        output = runs / f"{source[0][2:]}.png"
        result = gen("attention", *source, "--prompt", PROMPT, "--out", output)
        assert result.exit_code == 0, result.output
        assert f"wrote {output}" in result.output
        image = imread(output)
        assert image.shape[:2] == (2 * CELL_INCHES * DPI, 2 * CELL_INCHES * DPI)  # 2 layers x 2 heads
        assert attention_size(2, 2) == (image.shape[1], image.shape[0])
        assert (image[:, :, :3] < 0.9).mean() > 0.05  # heatmaps, not a blank page
    from_checkpoint = inside_view(runs / "gpt", PROMPT)
    from_export = inside_view(runs / "attention.onnx", PROMPT)
    assert from_checkpoint.labels == from_export.labels == [("\u23ce" if c == "\n" else "\u2423" if c == " " else c)
                                                            for c in PROMPT]
    assert np.abs(from_checkpoint.weights - from_export.weights).max() < 1e-4
    assert_attention_rows(from_export.weights)


def test_an_export_without_attention_outputs_gets_one_line_saying_how_to_export_them(runs):
    result = gen("attention", "--model", runs / "default.onnx", "--out", runs / "none.png")
    assert_one_line_error(result, "has no attention outputs", "gen export --attention")
    assert not (runs / "none.png").exists()
    assert_one_line_error(gen("attention", "--out", runs / "x.png"), "give --checkpoint RUN or --model MODEL.onnx")
    # The other export formats do not take it.
    assert_one_line_error(gen("export", "--genai", runs / "genai", "--checkpoint", runs / "gpt", "--attention"),
                          "--attention: for a gen ONNX export only")
    assert_one_line_error(gen("export", "--hf", runs / "hf", "--checkpoint", runs / "gpt", "--attention"),
                          "--attention: for an ONNX export only")


def test_a_bigram_gets_its_table_of_next_character_probabilities(runs):
    from gen.core.training.checkpoint import load_checkpoint

    for source in (["--checkpoint", runs / "bigram"], ["--model", runs / "bigram.onnx"]):
        output = runs / f"table-{source[0][2:]}.png"
        result = gen("attention", *source, "--out", output)
        assert result.exit_code == 0, result.output
        assert imread(output).shape[:2] == (TABLE_INCHES * DPI, TABLE_INCHES * DPI)
    checkpoint = load_checkpoint(runs / "bigram")
    expected = torch.softmax(checkpoint.model.token_embedding_table.weight.detach(), dim=-1).numpy()
    for path in (runs / "bigram", runs / "bigram.onnx"):
        view = inside_view(path, "ignored")
        assert view.kind == "table" and view.weights.shape == expected.shape
        assert np.abs(view.weights - expected).max() < 1e-5
        assert view.labels[checkpoint.tokenizer.encode("\n")[0]] == "\u23ce"


def test_gen_info_says_whether_an_export_has_the_attention_outputs(runs):
    def attention_row(path):
        return next(line.split(None, 1)[1] for line in gen("info", path).output.splitlines()
                    if line.strip().startswith("attention "))

    assert attention_row(runs / "attention.onnx").startswith("weights of every layer as outputs")
    assert attention_row(runs / "default.onnx") == "not in the outputs (gen export --attention adds them)"
    import json

    assert json.loads(gen("info", runs / "attention.onnx", "--json").output)["attention_outputs"] is True


def test_gen_plot_marks_the_best_checkpoint(runs):
    from gen.core.cli.plot import COLOURS
    from test_plot_and_info import colour_pixels

    output = runs / "loss.png"
    assert gen("plot", runs / "gpt", "--output", output).exit_code == 0
    assert colour_pixels(imread(output), COLOURS["best"], tolerance=0.08) > 40  # the star (and its legend sample)


# --- gen serve: POST /attention and sampled_distribution ---------------------------------------


@pytest.fixture(scope="module")
def served(attention_export):
    model = OnnxModel(attention_export)
    with running_server(create_app(model, max_batch=4)) as url:
        yield url, model


def test_the_server_answers_the_exports_attention_weights(served, tokenizer):
    url, model = served
    text = "ROMEO:\nBut soft, what light"  # longer than block_size 16: the window is its last 16 tokens
    whole = httpx.post(f"{url}/attention", json={"prompt": text}, timeout=30).json()
    window = tokenizer.encode(text)[-16:]
    assert whole["tokens"] == [tokenizer.decode([i]) for i in window] and whole["offset"] == len(text) - 16
    assert (whole["n_layer"], whole["n_head"], whole["position"]) == (2, 2, None)
    assert np.abs(np.array(whole["weights"]) - model.attention(window)).max() < 1e-5
    last = httpx.post(f"{url}/attention", json={"prompt": text, "position": -1}, timeout=30).json()
    assert last["position"] == 15
    assert np.array(last["weights"]).shape == (2, 2, 16)
    assert np.array(last["weights"]).tolist() == np.array(whole["weights"])[:, :, 15, :].tolist()
    third = httpx.post(f"{url}/attention", json={"prompt": text, "position": 2}, timeout=30).json()
    assert np.array(third["weights"]).shape == (2, 2, 3)
    bad = httpx.post(f"{url}/attention", json={"prompt": text, "position": 16}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "position"


def test_a_server_of_an_export_without_attention_says_how_to_get_it(small_gpt_onnx):
    with running_server(create_app(OnnxModel(small_gpt_onnx))) as url:
        answer = httpx.post(f"{url}/attention", json={"prompt": "ROMEO"}, timeout=30)
    assert answer.status_code == 400
    assert "gen export --attention" in answer.json()["error"]["message"]


def distribution(url, sampler, logprobs=10, **extra):
    body = {"prompt": "ROMEO:", "max_tokens": 12, "seed": 3, "sampler": sampler, "logprobs": logprobs,
            "sampled_distribution": True, **extra}
    answer = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    return answer["choices"][0]["logprobs"]


def test_top_k_cuts_the_distribution_the_token_was_drawn_from(served):
    logprobs = distribution(served[0], ["top_k:k=3"])
    assert "removed_alternatives" not in logprobs  # only what was asked for
    for token, entries in zip(logprobs["tokens"], logprobs["sampled_distribution"]):
        assert len(entries) == 10
        kept = [entry for entry in entries if entry["removed"] is None]
        assert len(kept) == 3 and kept == entries[:3]  # the model's three likeliest stay
        assert all(entry["sampled_probability"] == 0 and entry["removed"] == "filter" for entry in entries[3:])
        assert math.isclose(sum(entry["sampled_probability"] for entry in kept), 1.0, rel_tol=1e-5)
        assert token in [entry["text"] for entry in kept]
        probabilities = [entry["probability"] for entry in entries]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6


def test_a_low_temperature_sharpens_the_distribution_the_token_was_drawn_from(served):
    logprobs = distribution(served[0], ["temperature:t=0.5"], logprobs=5)
    for entries in logprobs["sampled_distribution"]:
        top, second = entries[0], entries[1]
        assert top["sampled_probability"] > top["probability"]  # the likeliest gains
        # At t=0.5 each probability is squared before normalising: ratios square.
        assert math.isclose(top["sampled_probability"] / second["sampled_probability"],
                            (top["probability"] / second["probability"]) ** 2, rel_tol=1e-3)
        assert all(entry["removed"] is None for entry in entries)


def test_sampled_distribution_needs_logprobs(served):
    answer = httpx.post(f"{served[0]}/v1/completions", json={"prompt": "A", "sampled_distribution": True}, timeout=30)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "sampled_distribution"

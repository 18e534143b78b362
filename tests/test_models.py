"""The model plugins' contracts: causality, cached == uncached logits, clear config errors,
and the torch backend of the shared generation loop."""
import numpy as np
import pytest
import torch

from gen.core.errors import GenError
from gen.core.generation import generate_ids, left_pad
from gen.core.registry import get_registry
from gen.core.sampling import build_sampler_chain
from gen.core.training.torch_backend import TorchBackend

VOCAB = 11
BLOCK_SIZE = 12


def make_model(name: str, **options):
    torch.manual_seed(0)
    config = {"vocab_size": VOCAB, "block_size": BLOCK_SIZE}
    if name == "gpt":
        config.update(n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    config.update(options)
    model = get_registry().get("model", name).from_config(config)
    if name == "gpt":
        # Wider weights than GPT's init, so that logits differ clearly between inputs
        # and a dependence on a later token could not hide in rounding.
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() >= 2:
                    parameter.normal_(std=0.3)
    return model.eval()


@pytest.mark.parametrize("name", ["gpt", "bigram"])
def test_logits_at_t_never_depend_on_later_tokens(name):
    model = make_model(name)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(VOCAB, (3, BLOCK_SIZE), generator=generator)
    with torch.no_grad():
        logits, _ = model(ids)  # (B, T, vocab)
        for t in range(BLOCK_SIZE - 1):
            changed = ids.clone()
            changed[:, t + 1:] = torch.randint(VOCAB, changed[:, t + 1:].shape, generator=generator)
            assert not torch.equal(changed[:, t + 1:], ids[:, t + 1:])
            changed_logits, _ = model(changed)
            assert torch.equal(changed_logits[:, :t + 1], logits[:, :t + 1]), f"position {t} saw the future"
            if name == "gpt" and t < BLOCK_SIZE - 2:
                assert not torch.allclose(changed_logits[:, t + 1:], logits[:, t + 1:])  # the test can fail


def test_cached_logits_equal_uncached_for_every_prefix_length():
    model = make_model("gpt")
    ids = torch.randint(VOCAB, (2, BLOCK_SIZE), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(ids)  # (B, T, vocab)
        for prefix in range(1, BLOCK_SIZE + 1):
            # A prefill of `prefix` tokens, then one token at a time from the cache.
            mask = torch.ones(2, prefix, dtype=torch.long)
            logits, past = model.forward_cached(ids[:, :prefix], mask, model.empty_past(2))
            assert (logits - full[:, :prefix]).abs().max() <= 1e-5
            for t in range(prefix, BLOCK_SIZE):
                mask = torch.ones(2, t + 1, dtype=torch.long)
                step_logits, past = model.forward_cached(ids[:, t:t + 1], mask, past)
                assert (step_logits[:, 0] - full[:, t]).abs().max() <= 1e-5, (prefix, t)


def test_left_padded_rows_get_the_logits_they_get_alone():
    model = make_model("gpt")
    rows = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10]]
    input_ids, mask = left_pad(rows)
    with torch.no_grad():
        batch_logits, past = model.forward_cached(
            torch.from_numpy(input_ids), torch.from_numpy(mask), model.empty_past(len(rows)))
        next_ids = torch.tensor([[3], [4], [5]])
        grown_mask = torch.cat([torch.from_numpy(mask), torch.ones(3, 1, dtype=torch.long)], dim=1)
        step_logits, _ = model.forward_cached(next_ids, grown_mask, past)
        for i, row in enumerate(rows):
            alone, _ = model(torch.tensor([row + [int(next_ids[i, 0])]]))  # (1, T, vocab)
            assert (batch_logits[i, -1] - alone[0, -2]).abs().max() <= 1e-5
            assert (step_logits[i, 0] - alone[0, -1]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["gpt", "bigram"])
def test_torch_backend_with_and_without_cache_draws_the_same_tokens(name):
    model = make_model(name)
    sampler = build_sampler_chain(["greedy"])
    prompts = [[1, 2, 3], [4]]
    runs = []
    for use_cache in (True, False):
        backend = TorchBackend(model, use_cache=use_cache)
        steps = generate_ids(backend, prompts, sampler, np.random.default_rng(0), max_new_tokens=3 * BLOCK_SIZE)
        runs.append(np.stack([ids for ids, _ in steps]))
    assert runs[0].shape == (3 * BLOCK_SIZE, 2)
    if name == "gpt":  # past block_size the two slide differently; before it they agree
        np.testing.assert_array_equal(runs[0][:BLOCK_SIZE - 3], runs[1][:BLOCK_SIZE - 3])
    else:  # bigram looks at the last token only
        np.testing.assert_array_equal(runs[0], runs[1])


def test_torch_backend_returns_float32_logits_of_the_last_position():
    model = make_model("gpt")
    backend = TorchBackend(model)
    assert backend.uses_cache and backend.block_size == BLOCK_SIZE
    input_ids, mask = left_pad([[1, 2, 3]])
    logits, past = backend.step(input_ids, mask, None)
    assert logits.dtype == np.float32 and logits.shape == (1, VOCAB)
    with torch.no_grad():
        expected, _ = model(torch.tensor([[1, 2, 3]]))
    np.testing.assert_allclose(logits[0], expected[0, -1].numpy(), atol=1e-5)
    assert past[0][0].shape == (1, 2, 3, 8)  # (B, heads, P, head size)
    assert not TorchBackend(make_model("bigram")).uses_cache


def test_n_embd_not_divisible_by_n_head_is_a_clear_error():
    with pytest.raises(GenError, match="divisible"):
        make_model("gpt", n_embd=30, n_head=4)

"""`gen run MODEL.onnx`: stream text from an export with onnxruntime, without torch.

Importing this module imports click only; onnxruntime and numpy come in when the
command runs, so that the `gen` command line starts fast.
"""
from __future__ import annotations

import click


@click.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--prompt", default="\n", show_default="a newline", help="Text to continue.")
@click.option(
    "--sampler", "samplers", multiple=True, metavar="SPEC",
    help="NAME[:KEY=VALUE,...], e.g. top_p:p=0.9; repeat to chain filters (default: multinomial).",
)
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=500, show_default=True)
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed of the one random stream of the whole run.")
@click.option("--stop", multiple=True, metavar="TEXT", help="End a sample at this text (repeatable).")
@click.option(
    "--provider", default=None, metavar="NAME",
    help="onnxruntime execution provider, e.g. cuda or CUDAExecutionProvider (default: CPU).",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="onnxruntime intra-op threads (default 1: fastest for one prompt on a busy machine).",
)
def run(model, prompt, samplers, max_new_tokens, num_samples, seed, stop, provider, threads):
    """Generate text from MODEL.onnx (written by `gen export`) on onnxruntime."""
    import numpy as np

    from gen.core.generate import echo_samples
    from gen.runtime.generator import Generator, resolve_sampler

    sampler = resolve_sampler(list(samplers))
    generator = Generator(model, provider=provider, threads=threads)
    echo_samples(generator, generator.tokenizer, prompt, sampler, np.random.default_rng(seed),
                 max_new_tokens, num_samples, stop)

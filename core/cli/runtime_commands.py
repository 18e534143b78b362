"""`gen run MODEL.onnx`, `gen serve MODEL.onnx` and `gen eval`: generate from an export with
onnxruntime, without torch, alone or for many HTTP clients at once; score an export or a checkpoint.

Importing this module imports click only; onnxruntime and numpy (and torch, for
`gen eval` of a checkpoint) come in when a command runs, so that the `gen` command
line starts fast. The commands reach `gen` through the `register_commands` hook,
as a third-party plugin's would.
"""
from __future__ import annotations

import math

import click

from gen.core import hookimpl
from gen.core.errors import GenError
from gen.core.cli.generation_options import GenerationCommand, echo_from_options, generation_options


@click.command(cls=GenerationCommand)
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@generation_options
@click.option(
    "--provider", default=None, metavar="NAME",
    help="onnxruntime execution provider, e.g. cuda or CUDAExecutionProvider (default: CPU).",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="onnxruntime intra-op threads, at most 4 per core (default 1: fastest for one prompt on a busy machine).",
)
def run(model, provider, threads, **options):
    """Generate text from MODEL.onnx (written by `gen export`) on onnxruntime."""
    from gen.runtime.onnx_model import OnnxModel

    generator = OnnxModel(model, provider=provider, threads=threads)
    echo_from_options(generator, generator.tokenizer, **options)


SERVE_MODULES = ("starlette", "uvicorn", "prometheus_client")


@click.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 exposes the server to the network (see the README).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Choices generated at once, in one batched decode step.")
@click.option("--max-queue", type=click.IntRange(min=0), default=256, show_default=True,
              help="Requests that may wait for room in the batch; more get 503 with Retry-After.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads (default 1).")
@click.option("--provider", default=None, metavar="NAME", help="onnxruntime execution provider (default: CPU).")
@click.option("--max-tokens-limit", type=click.IntRange(min=1), default=4096, show_default=True,
              help="The largest max_tokens a request may ask for.")
@click.option("--max-prompt-tokens", type=click.IntRange(min=1), default=4096, show_default=True,
              help="The longest prompt a request may send, in tokens.")
@click.option("--max-choices", type=click.IntRange(min=1), default=64, show_default=True,
              help="The most completions a request may ask for (prompts x n).")
@click.option("--max-request-prompt-tokens", type=click.IntRange(min=1), default=65536, show_default=True,
              help="The most prompt tokens a request may send, counted once per completion (prompt tokens x n).")
@click.option("--max-stop-chars", type=click.IntRange(min=0), default=4096, show_default=True,
              help="The most characters a request's stop strings may hold together.")
@click.option("--max-logit-bias", type=click.IntRange(min=0), default=1024, show_default=True,
              help="The most logit_bias entries a request may send.")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True,
              help="The largest request body; larger ones get 413.")
@click.option("--api-key", "api_keys", multiple=True, metavar="KEY",
              help="Answer only requests sending Authorization: Bearer KEY (repeat for several keys; in the "
                   "environment variable, separate them with spaces or commas). /health and the playground's "
                   "page stay open; the page asks for the key.")
@click.option("--api-key-file", type=click.File("r", encoding="utf-8"), default=None, metavar="FILE",
              help="Read API keys from FILE, one a line (blank lines are skipped).")
@click.option("--allowed-hosts", multiple=True, metavar="HOST",
              help="Answer only requests whose Host header names HOST (repeatable; *.example.com matches its "
                   "subdomains; * any). Default: on a loopback address localhost, 127.0.0.1 and [::1] (any port), "
                   "else any.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let pages from ORIGIN (e.g. https://app.example.com) call the API from a browser (repeatable; "
                   "default: none, CORS off).")
@click.option("--served-model-name", "model_names", multiple=True, metavar="NAME",
              help="The model's name in /v1/models and the replies (repeatable: the first is reported, all are "
                   "accepted in a request's model; default: the file's name). Other names get 404.")
@click.option("--graceful-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              metavar="SECONDS",
              help="On SIGTERM or Ctrl-C, how long running requests may finish before they end with an error.")
@click.option("--header-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              metavar="SECONDS",
              help="Close a connection whose request line and headers have not arrived within SECONDS.")
def serve(model, host, port, max_batch, max_queue, threads, provider, max_tokens_limit, max_prompt_tokens,
          max_choices, max_request_prompt_tokens, max_stop_chars, max_logit_bias, max_body_bytes, api_keys, api_key_file, allowed_hosts, cors_origins, model_names, graceful_timeout,
          header_timeout):
    """Serve MODEL.onnx over HTTP: OpenAI's completions API, a playground page at /, metrics.

    Requests are batched continuously: every running completion shares one decode step, and
    each one's text equals `gen run`'s with its seed. SIGTERM or Ctrl-C stops accepting,
    finishes the requests in flight (up to --graceful-timeout, then ends the rest with an
    error), and exits 0; a second Ctrl-C stops at once.
    """
    import importlib.util

    missing = [name for name in SERVE_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise GenError(f"gen serve needs the serve extra ({', '.join(missing)} missing): pip install 'gen[serve]'")
    from gen.runtime.api import Limits
    from gen.runtime.server import serve as run_server

    # One key may not hold a space or a comma: the environment variable separates keys with either.
    keys = [key for value in api_keys for key in value.replace(",", " ").split()]
    if api_key_file is not None:
        from_file = [line.strip() for line in api_key_file if line.strip()]
        if not from_file:
            raise GenError(f"--api-key-file {api_key_file.name} holds no key; write one key a line")
        keys += from_file
    limits = Limits(max_tokens=max_tokens_limit, max_prompt_tokens=max_prompt_tokens, max_choices=max_choices,
                    max_request_prompt_tokens=max_request_prompt_tokens, max_stop_chars=max_stop_chars,
                    max_logit_bias=max_logit_bias)
    run_server(model, host=host, port=port, max_batch=max_batch, max_queue=max_queue, threads=threads,
               provider=provider, limits=limits, max_body_bytes=max_body_bytes, model_names=model_names,
               api_keys=keys, allowed_hosts=allowed_hosts, cors_origins=cors_origins,
               graceful_timeout=graceful_timeout, header_timeout=header_timeout)


@click.command(name="eval")
@click.argument("model", required=False, default=None)
@click.option("--checkpoint", default=None, help="A checkpoint or run directory (default: out).")
@click.option("--data", default=None, help="The corpus (default: the one the checkpoint was trained on).")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Windows scored at once.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto (checkpoints only).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a sentence.")
def evaluate(model, checkpoint, data, split, batch_size, device, as_json):
    """Exact loss of a checkpoint, or of MODEL.onnx, over a whole data split.

    The split is cut into non-overlapping block_size windows, so every token but the
    first is scored once; the split is the same one training used (same tokenizer,
    same 90/10 cut). Prints nats and bits per token and bits per character.
    """
    import json

    from gen.core.data import load_dataset
    from gen.core.scoring import exact_loss, loss_report
    from gen.core.cli.backends import open_backend

    if model is not None and checkpoint is not None:
        raise GenError("give either MODEL or --checkpoint, not both")
    path = model or checkpoint or "out"
    backend = open_backend(path, device=device)
    checkpoint = getattr(backend, "checkpoint", None)  # None for an ONNX file
    if checkpoint is None:
        if data is None:
            raise GenError("an ONNX file does not record its training data; give --data (e.g. --data shakespeare)")
        source = path
    else:
        data = data or checkpoint.train_args.get("data")
        if not data:
            raise GenError(f"checkpoint {str(checkpoint.path)!r} does not record its data; give --data")
        source = f"{checkpoint.path} (step {checkpoint.step})"
    dataset = load_dataset(data, tokenizer=backend.tokenizer)
    ids = dataset.split(split)
    loss, tokens = exact_loss(backend.logits, ids, backend.block_size, batch_size=batch_size)
    if not math.isfinite(loss):
        raise GenError(f"{source} scores a loss of {loss} on the {split} split: the model is broken "
                       f"(its weights hold NaN or infinite values); retrain it, e.g. with a lower --lr")
    # Every token but the first is scored; bits per character counts their characters.
    characters = len(dataset.tokenizer.decode(ids[1:].tolist()))
    report = loss_report(loss, tokens, characters)
    report.update(split=split, data=data, model=source)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{source} on the {split} split of {data!r} ({tokens:,} tokens scored)")
    click.echo(
        f"{split} loss {report['loss']:.4f} nats/token, {report['bits_per_token']:.4f} bits/token, "
        f"{report['bits_per_character']:.4f} bits/char"
    )


@hookimpl
def register_commands(cli):
    cli.add_command(run)
    cli.add_command(serve)
    cli.add_command(evaluate)

"""`gen export OUTPUT.onnx`: a checkpoint to one ONNX file for `gen run`.

Importing this module imports click only; torch, onnx and onnxscript come in when
the command runs. The command reaches `gen` through the `register_commands` hook,
as a third-party plugin's would.
"""
from __future__ import annotations

import click

from gen.core import hookimpl


@click.command()
@click.argument("output", required=False, type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--checkpoint", default="out", show_default=True, type=click.Path(path_type=str),
    help="A checkpoint directory, or a run directory (its best checkpoint).",
)
@click.option("--opset", type=click.IntRange(min=1), default=None,
              help="ONNX opset, 18 or newer, of the portable graph (implies --portable).")
@click.option("--portable", is_flag=True,
              help="Write torch's operator-by-operator graph (standard ONNX operators only) instead of "
                   "gpt's fused graph for onnxruntime.")
@click.option("--static-cache", is_flag=True,
              help="A KV cache of block_size positions that each step updates in place (gpt; faster decoding "
                   "in gen run; its cache inputs differ from the plain past/present contract, see docs/export.md).")
@click.option("--attention", is_flag=True,
              help="Add every layer's attention weights as extra graph outputs (gpt's fused graph), for gen "
                   "attention and the playground's attention panel; the default graph has none.")
@click.option(
    "--quantize", type=click.Choice(["int8", "int4"]), default=None,
    help="Write int8 (dynamic) or int4 (MatMulNBits, weight-only) weights and report the validation loss it costs.",
)
@click.option(
    "--verify/--no-verify", default=True, show_default=True,
    help="Compare onnxruntime with torch on several batch sizes and lengths.",
)
@click.option("--overwrite", is_flag=True,
              help="Replace OUTPUT (or DIR) if it exists (it is kept until the new one is whole).")
@click.option(
    "--chat-template", "chat_template_file", default=None, metavar="FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=str),
    help="A Jinja chat template (as Hugging Face tokenizers' chat_template) for gen serve's /v1/chat/completions, "
         "written into the file; without it gen serve uses its plain default.",
)
@click.option(
    "--genai", "genai_dir", default=None, metavar="DIR", type=click.Path(file_okay=False, path_type=str),
    help="Instead of OUTPUT: write DIR/model.onnx and the genai_config.json that onnxruntime-genai loads.",
)
@click.option(
    "--hf", "hf_dir", default=None, metavar="DIR", type=click.Path(file_okay=False, path_type=str),
    help="Instead of OUTPUT: write a gpt checkpoint as a Hugging Face GPT-2 folder (config.json, "
         "model.safetensors, tokenizer.json) that transformers loads.",
)
def export(output, checkpoint, opset, portable, static_cache, attention, quantize, verify, overwrite, chat_template_file,
           genai_dir, hf_dir):
    """Export a checkpoint to OUTPUT.onnx: graph, weights, tokenizer and config in one file.

    With --genai DIR, the same file goes into DIR beside a genai_config.json, for
    onnxruntime-genai (pip install 'gen[genai]'); it generates token ids, and gen's
    tokenizer (in the file's metadata) encodes and decodes them.

    With --hf DIR, a gpt checkpoint becomes a Hugging Face GPT-2 folder for
    transformers (GPT2LMHeadModel, AutoTokenizer); --chat-template goes into its
    tokenizer_config.json.
    """
    from gen.core.errors import GenError

    if [output, genai_dir, hf_dir].count(None) != 2:
        raise GenError("give OUTPUT.onnx, or --genai DIR for onnxruntime-genai, or --hf DIR for transformers "
                       "(one of them)")
    chat_template = None
    if chat_template_file is not None:
        from gen.core.reading import SIZE_LIMITS, read_text

        chat_template = read_text(chat_template_file, "chat template", SIZE_LIMITS["chat template"])
    if hf_dir is not None:
        onnx_only = [name for name, given in (("--opset", opset is not None), ("--portable", portable),
                                               ("--static-cache", static_cache), ("--attention", attention),
                                               ("--quantize", quantize is not None))
                     if given]
        if onnx_only:
            raise GenError(f"{', '.join(onnx_only)}: for an ONNX export only; --hf writes the float32 weights as they are")
        from gen.core.training.hf import export_hf

        export_hf(checkpoint, hf_dir, overwrite=overwrite, chat_template=chat_template, say=click.echo)
        return
    from gen.export.onnx_export import ExportOptions, export_onnx

    options = ExportOptions(opset=opset, quantize=quantize, verify=verify, overwrite=overwrite, portable=portable,
                            static_cache=static_cache, attention=attention, chat_template=chat_template,
                            progress=click.echo)
    if genai_dir is not None:
        if attention:
            raise GenError("--attention: for a gen ONNX export only (gen run, gen serve, gen attention); "
                           "leave it out with --genai")
        from gen.export.genai import export_genai

        export_genai(checkpoint, genai_dir, options=options)
    else:
        export_onnx(checkpoint, output, options=options)


@hookimpl
def register_commands(cli):
    cli.add_command(export)

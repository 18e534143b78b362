"""Built-in model plugins. Registered by path so that listing them never imports torch."""
from gen.core import hookimpl


@hookimpl
def register_models(register):
    register("bigram", "gen.plugins.bigram:BigramLanguageModel",
             description="The classic bigram model: a vocab x vocab table of next-token logits.")
    register("gpt", "gen.plugins.gpt:GPT",
             description="A decoder-only transformer in the nanoGPT lineage, with a KV cache.")

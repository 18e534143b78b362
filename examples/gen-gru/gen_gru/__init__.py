"""A gen plugin adding `gru`: a recurrent language model whose cache is a fixed-size state.

This module is what gen imports at startup, in every environment, so it must not
import torch: the model is registered by "module:attribute" path, and gen imports
`gen_gru.model` (and with it torch) only when the model is used or its options are listed.
"""
from gen.core import hookimpl


@hookimpl
def register_models(register):
    register("gru", "gen_gru.model:GRU",
             description="A GRU over the tokens' embeddings, its cache a fixed-size state.")

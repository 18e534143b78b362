"""gen.plugins: the built-in plugins, registered through the same hooks as third-party ones.

tokenizers (char, byte, bpe), samplers (greedy, multinomial, temperature, top_k,
top_p, min_p) and models (bigram, gpt; registered by path, so listing them does
not import torch).
"""

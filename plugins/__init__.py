"""gen.plugins: the built-in plugins, registered through the same hooks as third-party ones.

tokenizers (char, byte, bpe; hf, which needs the tokenizers package), samplers
(greedy, multinomial, temperature, top_k, top_p, min_p, repetition_penalty, penalties,
no_repeat_ngram, mirostat) and models (bigram, gpt; registered by path, so registering
them does not import torch).
"""

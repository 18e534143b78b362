"""Built-in tokenizers (pure Python, no torch)."""

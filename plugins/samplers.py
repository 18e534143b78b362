"""Built-in samplers (numpy, no torch)."""

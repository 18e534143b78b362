# Sourced by the GPU scripts, from the repository root: gen from this checkout without
# installing it, for a machine where torch, onnx, onnxscript, onnxruntime, pluggy,
# click, safetensors and tqdm are installed but gen is not.
# Defines `gen` (a shell function) and GEN_MAIN (the same command as a script, for torchrun).

# The four folders as subpackages of a `gen` namespace.
site=$(mktemp -d)
mkdir -p "$site/gen"
for part in core plugins export runtime; do ln -s "$PWD/$part" "$site/gen/$part"; done
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
GEN_MAIN="$site/gen_main.py"
printf 'import sys\nfrom gen.core.cli import main\nsys.argv[0] = "gen"\nmain()\n' > "$GEN_MAIN"
gen() { python3 "$GEN_MAIN" "$@"; }

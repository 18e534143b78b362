# `make demo` and `make test` do all the set-up on a fresh machine with Python 3.11 and pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; a GPU user sets TORCH to the CUDA build they want (see README).
TORCH ?= torch==2.13.0
# A path to a UTF-8 text file, or `shakespeare` (downloaded once into the user cache).
DATA ?= shakespeare
OUT ?= out
# `make demo` again continues its run in $(OUT) (--resume: nothing to train once it is complete);
# `make demo FRESH=1` trains it again from scratch (--overwrite). Neither touches .venv.
TRAIN_MODE = $(if $(FRESH),--overwrite,$(if $(wildcard $(OUT)/latest),--resume))

.PHONY: demo test install docs clean distclean

# setuptools prints a 10-line BuildBackendWarning on every editable install of a package whose
# folders are mapped (core/ is gen.core), a general caution about same-named folders that says
# nothing about this project: it is filtered by its first words, other warnings still show.
EDITABLE = PYTHONWARNINGS="ignore:Editable installation"

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'setuptools>=77'
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(EDITABLE) $(BIN)/python -m pip install --quiet -e '.[train,test]'
	$(EDITABLE) $(BIN)/python -m pip install --quiet -e '.[genai]' || echo "onnxruntime-genai does not install here; its test will be skipped"
	touch $@

demo: install
	$(BIN)/gen train --data $(DATA) --out $(OUT) $(TRAIN_MODE)
	$(BIN)/gen sample --checkpoint $(OUT) --prompt 'ROMEO:' --max-new-tokens 200 --seed 1
	$(BIN)/gen export $(OUT).onnx --checkpoint $(OUT) --overwrite
	$(BIN)/gen run $(OUT).onnx --prompt 'ROMEO:' --max-new-tokens 200 --seed 1

test: install
	$(BIN)/python -m pytest -q

# docs/cli.md from the commands' own help (tests/test_docs.py checks it is up to date);
# docs/tutorial.md's and docs/inside.md's outputs and pictures from a full run of their commands,
# then the playground's screenshots from inside.md's export (docs/make_inside.py). Minutes each:
# nice'd, and on one torch thread, which on a busy machine is many times faster than two waiting for each other
# (tests/test_doc_blocks.py checks that the pages' outputs have the formats the commands print).
docs: install
	$(BIN)/python -m gen.core.cli.reference docs/cli.md
	OMP_NUM_THREADS=1 nice $(BIN)/python docs/run_docs.py --write docs/tutorial.md --copy out/loss.png:docs/loss.png
	OMP_NUM_THREADS=1 nice $(BIN)/python docs/run_docs.py --write docs/inside.md \
		--copy docs/inside-bigram.png:docs/inside-bigram.png --copy docs/inside-loss.png:docs/inside-loss.png \
		--copy docs/inside-attention.png:docs/inside-attention.png --copy build/inside/gpt.onnx:build/inside/gpt.onnx
	OMP_NUM_THREADS=1 nice $(BIN)/python docs/make_inside.py build/inside/gpt.onnx

# What the demo and the tests made; .venv stays (distclean removes it too).
clean:
	rm -rf .venv-runtime $(OUT) $(OUT).onnx build *.egg-info .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV)

# Set-up and everyday commands. `make test` and `make demo` create .venv and install everything on
# first use, from this repository's own files.
#
# torch is installed before the package, pinned to TORCH_SPEC (the CPU build on this project's
# machines), and the package is installed with --no-build-isolation so that no isolated build
# environment ever resolves torch (that would download the newest CUDA build). If .venv already holds
# a torch (e.g. a CUDA build you installed yourself), it is kept.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo demo-backends test bench bench-quick bench-attention bench-fusion lint format clean \
	gpu-compile gpu-compile-compat compat device-stack

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "setuptools>=64" wheel
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --no-build-isolation -e ".[test,dev,hub,bench]"
	touch $(STAMP)

# The main command: a synthetic clip written as a real MP4 through av, classified by the bundled model
# (offline), with the time spent decoding, preprocessing and in the model.
DEMO_CLIP ?= demo.mp4
DEMO_LABEL ?= right then back left
demo: install
	$(BIN)/timesformer sample $(DEMO_CLIP) --label "$(DEMO_LABEL)"
	$(BIN)/timesformer classify $(DEMO_CLIP)

# A random TimeSformer-base through every backend that runs here: agreement with eager and time.
demo-backends: install
	$(BIN)/python -m timesformer demo

test: install
	$(BIN)/python -m pytest -q

# Every launch of the triton backend compiled for sm_80 and sm_90 on this machine (no GPU needed): registers,
# spills, shared memory, tensor-core instructions, occupancy; fails on a spill or a compile error. Results are
# cached in .cache/gpu-compile/. ARGS passes options, e.g. make gpu-compile ARGS="--quick".
gpu-compile: install
	env -u TRITON_INTERPRET $(BIN)/python -m tools.gpu_compile $(ARGS)

# The oldest Triton the package supports (the H200 test machine's), installed beside the venv's own and put
# first on PYTHONPATH for the two targets below; torch stays the venv's. Triton 3.6's interpreter converts
# 1-element arrays to Python ints, which NumPy 2.4 refuses: an older NumPy goes with it.
TRITON_COMPAT ?= 3.6.0
COMPAT_DIR := .triton-$(TRITON_COMPAT)

$(COMPAT_DIR)/.installed:
	$(BIN)/python -m pip install --quiet --no-deps --target $(COMPAT_DIR) "triton==$(TRITON_COMPAT)" "numpy<2.4"
	touch $@

gpu-compile-compat: install $(COMPAT_DIR)/.installed
	env -u TRITON_INTERPRET PYTHONPATH=$(COMPAT_DIR) $(BIN)/python -m tools.gpu_compile $(ARGS)

# The kernel and backend tests in the interpreter of the oldest supported Triton.
compat: install $(COMPAT_DIR)/.installed
	PYTHONPATH=$(COMPAT_DIR) $(BIN)/python -c "import triton; assert triton.__version__ == '$(TRITON_COMPAT)', triton.__version__"
	PYTHONPATH=$(COMPAT_DIR) TRITON_INTERPRET=1 $(BIN)/python -m pytest -q \
		-W "ignore:Conversion of an array:DeprecationWarning" tests/test_attention.py \
		tests/test_temporal_attention.py tests/test_linear.py tests/test_patch_embed.py \
		tests/test_triton_backend.py tests/test_triton_fast_path.py

# The H200 machine's software on this CPU machine: Python 3.12, torch 2.11 (PyPI's CUDA build, about 3 GB
# downloaded: not part of CI), Triton 3.6, transformers 5.17, plus NumPy < 2.4 (Triton 3.6's interpreter
# needs it), the newest PyAV, peft and accelerate; then the backend, kernel, CUDA-graph, parity, benchmark,
# hooks/adapters, video, evaluate, loading, transformers-API and PEFT tests under it. torch 2.11 is the oldest
# torch pyproject.toml accepts. PY312 names a Python 3.12.
DEVICE_STACK ?= .venv-device
PY312 ?= python3.12

device-stack:
	test -x $(DEVICE_STACK)/bin/python || $(PY312) -m venv $(DEVICE_STACK)
	$(DEVICE_STACK)/bin/python -m pip install --quiet "torch==2.11.0" "triton==3.6.0" "transformers==5.17.0" \
		"numpy<2.4" av safetensors pillow pytest pytest-xdist pytest-benchmark matplotlib "peft>=0.17" "accelerate>=1.0"
	PYTHONPATH=. $(DEVICE_STACK)/bin/python -m pytest -q -p no:cacheprovider -n 2 \
		-W "ignore:Conversion of an array:DeprecationWarning" tests/test_backends.py tests/test_triton_backend.py \
		tests/test_triton_fast_path.py tests/test_cuda_graphs.py tests/test_attention.py \
		tests/test_temporal_attention.py tests/test_linear.py tests/test_patch_embed.py \
		tests/test_parity_transformers.py tests/test_bench.py tests/test_hooks_and_adapters.py \
		tests/test_video.py tests/test_evaluate.py tests/test_loading.py tests/test_drop_in_api.py tests/test_hostile.py \
		tests/test_transformers_api.py tests/test_peft.py

# The benchmark suite for the device found (GPU: full suite; CPU: the short one). JSON, Markdown and PNG
# under bench/results/<device>/. ARGS passes options, e.g. make bench ARGS="--configs base --batches 32".
bench: install
	$(BIN)/python -m bench $(ARGS)

bench-quick: install
	$(BIN)/python -m bench --quick $(ARGS)

SLUG = $$($(BIN)/python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-').lower())")

# GPU kernels against the reference path and SDPA (needs CUDA; results under bench/results/<device>/).
bench-attention: install
	$(BIN)/python -m bench.bench_attention --json bench/results/$(SLUG)/attention_bf16.json

# Fused projections and patch embedding against unfused torch and the bare cuBLAS product (needs CUDA).
bench-fusion: install
	$(BIN)/python -m bench.bench_fusion --json bench/results/$(SLUG)/fusion_bf16.json

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(DEVICE_STACK) build *.egg-info .pytest_cache .ruff_cache .cache .triton-*

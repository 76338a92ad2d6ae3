# One command each for a fresh machine:  `make demo`  (the README's "run it")  and  `make test`;
# `make toy` retrains the toy world's models that `make demo` shows.
# Both create ./.venv and install what they need. TORCH is the torch requirement for that venv; the
# default pins the CPU wheel CI machines carry. ComfyUI users never run this: ComfyUI owns torch.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.moca-installed             # torch + requirements.txt: what the demo and the benchmark need
TEST_STAMP := $(VENV)/.moca-test-installed   # + the test / training extras: what the tests and `make toy` need

.PHONY: test test-core test-comfyui demo bench toy clean-venv

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $(STAMP)

$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(BIN)/python -m pip install -q -r requirements-test.txt
	# insightface 2.x for the insightface-path parity tests; --no-deps because it asks for the CPU
	# onnxruntime, which would share one module with the onnxruntime-gpu that requirements.txt installs
	$(BIN)/python -m pip install -q --no-deps "insightface>=2,<3"
	touch $(TEST_STAMP)

# Core tests here, then the ComfyUI tests against ../shared/comfyui's trees (or $$COMFYUI_PATH):
# scripts/test_comfyui.sh says how.
test: test-core test-comfyui

test-core: $(TEST_STAMP)
	$(BIN)/python -m pytest -m "not comfyui"

test-comfyui: $(TEST_STAMP)
	PYTHON=$(PYTHON) scripts/test_comfyui.sh

demo: $(STAMP)
	$(BIN)/python -m moca_model demo --out out/demo --overwrite

# Rebuild every toy-world model from nothing (resumable: run it again after an interruption).
toy: $(TEST_STAMP)
	$(BIN)/python -m moca_model.toy build

bench: $(STAMP)
	$(BIN)/python -m moca_model bench

clean-venv:
	rm -rf $(VENV) .venv-comfyui .comfyui

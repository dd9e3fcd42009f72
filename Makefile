# The README's commands. Each target creates .venv and installs what it needs on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama.cpp is compiled for this CPU (-march=native) from llama-cpp-python's source, with two lines of its AMX
# matmul (Xeon 4th gen+; scorer 5.7 -> 9.6 pairs/s on a 2-core Xeon, reports/scorer-speed.md) patched:
# - it loads the tile config once per thread and then trusts it, but torch's bf16 kernels (oneDNN) release the
#   tiles on the same OpenMP threads, so a later llama.cpp matmul in that process dies (SIGILL) or returns
#   garbage: patched to load the config on every call (one instruction per matmul chunk);
# - GCC 12's _tile_loadconfig tells the compiler it reads 8 bytes, so the stores that fill the 64-byte config
#   are dropped as dead and ldtilecfg faults: patched to hand the whole config to the instruction.
LLAMA_VERSION := 0.3.36
LLAMA_SRC := build/llama_cpp_python-$(LLAMA_VERSION)
AMX_MMQ := $(LLAMA_SRC)/vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch==2.13.0 first: the CPU build on local disk (an unpinned torch would pull a CUDA build).
	$(BIN)/pip install "torch==2.13.0"
	rm -rf $(LLAMA_SRC)
	$(BIN)/pip download --no-deps --no-binary :all: "llama-cpp-python==$(LLAMA_VERSION)" -d build
	tar xzf $(LLAMA_SRC).tar.gz -C build
	sed -i -e 's/static thread_local bool done = false;/bool done = false;/' \
		-e 's/_tile_loadconfig(&tc);/__asm__ volatile("ldtilecfg %0" :: "m"(tc));/' $(AMX_MMQ)
	grep -q 'ldtilecfg %0' $(AMX_MMQ) && ! grep -q 'thread_local bool done' $(AMX_MMQ)
	# --no-cache-dir: pip would silently reuse a cached wheel built with other flags.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --no-cache-dir ./$(LLAMA_SRC)
	$(BIN)/pip install -e ".[build,dev,serve,ray]"
	# llama.cpp's GGUF converters (convert_hf_to_gguf, convert_lora_to_gguf) and the gguf-py they are written
	# against, from the same source as the runtime (no second build; their other needs are in [build]).
	$(BIN)/pip install --no-deps ./$(LLAMA_SRC)/vendor/llama.cpp/gguf-py ./$(LLAMA_SRC)/vendor/llama.cpp
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/epm-edge match examples/retailer.csv examples/marketplace.csv \
		--top-k 3 --one-to-one -o out/demo-matches.csv --force

test: $(STAMP)
	$(BIN)/pytest -q

# The committed report: the variants of an export of the default model (made first if missing), each
# pair scored in both record orders as `match` does, on the first 200 pairs of the abt_buy and
# wdc_products test splits (thresholds from the first 200 valid pairs), on all cores of this host:
# about 70 min on the 2-core EPYC. bitsandbytes (transformers int8/nf4) is left out for time, the
# slowest rows of the earlier one-order report. BENCH_ARGS adds or overrides options.
EXPORT ?= epm-export
DATA ?= ../shared/data
BENCH_OUT ?= reports/cpu-$(shell nproc)core
BENCH_ARGS ?=
$(EXPORT)/report.json: | $(STAMP)
	$(BIN)/epm-edge export --adapter models/epm-smollm2-135m --out $(EXPORT) --allow-fail

bench: $(EXPORT)/report.json
	$(BIN)/epm-edge bench --model $(EXPORT) --data $(DATA)/abt_buy,$(DATA)/wdc_products \
		--split test --limit 200 --variants 'hf-fp32,gguf-*,onnx-*,tfidf' --timing-pairs 64 --repeat 2 \
		--out $(BENCH_OUT) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) out build

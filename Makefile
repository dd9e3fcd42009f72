# The README's commands. Each target creates .venv and installs what it needs on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama.cpp is compiled for this CPU (-march=native), except on CPUs with AMX (Xeon 4th gen+): there it
# gets the AVX-512 set every AMX Xeon has, without AMX, which keeps llama.cpp's repacked Q4_0/Q8_0 weights.
# Why: built by GCC 12, llama.cpp's AMX matmul segfaults at ldtilecfg (GCC 12's _tile_loadconfig declares
# an 8-byte memory input, so the stores that fill the 64-byte tile config are removed as dead). Built
# with -fno-dse it runs, but decoded slower than this AVX-512 build on a 2-core Xeon (issue 4's notes).
AMX_FREE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
LLAMA_CMAKE_ARGS ?= $(if $(shell grep -m1 -o amx_int8 /proc/cpuinfo 2>/dev/null),$(AMX_FREE),-DGGML_NATIVE=ON)

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch==2.13.0 first: the CPU build on local disk (an unpinned torch would pull a CUDA build).
	$(BIN)/pip install "torch==2.13.0"
	# --no-cache-dir: pip would silently reuse a cached wheel built with other flags.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --no-cache-dir "llama-cpp-python==0.3.36"
	$(BIN)/pip install -e ".[build,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/epm-edge match examples/retailer.csv examples/marketplace.csv \
		--top-k 3 --one-to-one -o out/demo-matches.csv --force

test: $(STAMP)
	$(BIN)/pytest -q

# The committed report: every variant of an export of the default model (made first if missing) on
# the first 300 pairs of the abt_buy and wdc_products test splits (thresholds from the first 300 valid
# pairs), on all cores of this host: about 1 h 20 min on 2 cores. BENCH_ARGS adds or overrides options.
EXPORT ?= epm-export
DATA ?= ../shared/data
BENCH_OUT ?= bench/reports/cpu-$(shell nproc)core
BENCH_ARGS ?=
$(EXPORT)/report.json: | $(STAMP)
	$(BIN)/epm-edge export --adapter models/epm-smollm2-135m --out $(EXPORT) --allow-fail

bench: $(EXPORT)/report.json
	$(BIN)/epm-edge bench --model $(EXPORT) --data $(DATA)/abt_buy,$(DATA)/wdc_products \
		--split test --limit 300 --timing-pairs 64 --repeat 2 --out $(BENCH_OUT) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) out

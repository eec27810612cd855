# DELLM: `make demo` runs the main job, `make test` runs the tests. Both install what they need into
# the project's own virtualenv, .venv, so they work on an externally-managed system Python
# (Debian, Ubuntu), pyenv and conda alike. Put .venv/bin on PATH to use the commands yourself.
SYSTEM_PYTHON ?= python3
VENV ?= .venv
PYTHON = $(VENV)/bin/python
PIP = $(PYTHON) -m pip --disable-pip-version-check
CONSTRAINTS = constraints.txt
# The venv's own pip, pinned: what python -m venv brings differs between Pythons (23.2 on 3.11.7).
PIP_VERSION = 26.3
PROTO_OUT = protos/dellm_pb2.py protos/dellm_pb2.pyi protos/dellm_pb2_grpc.py
MODELS_FOR_TESTS = qwen2.5-coder-0.5b-instruct gemma-3-270m smollm2-135m-instruct
STAMP = $(VENV)/.dellm-installed

.PHONY: install demo demo-lan bench bench-report bench-discovery test test-fast protos protos-check models lint \
        bench-seed doctor llama clean

# torch first, pinned, from the CPU build on disk: otherwise the transformers extra would pull a
# multi-GB CUDA build. Then the project without llama.cpp, then llama.cpp built portable (no AMX;
# scripts/build_llama.py checks the build's own system info), then the node extra on top of it.
$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS) scripts/make_venv.py scripts/build_llama.py node/llama_build.py
	@$(SYSTEM_PYTHON) scripts/make_venv.py $(VENV)
	$(PIP) install --quiet --upgrade "pip==$(PIP_VERSION)"
	$(PIP) install --quiet -c $(CONSTRAINTS) "torch==2.13.0"
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[lan,redis,transformers,gateway,dev]"
	$(PYTHON) scripts/build_llama.py --constraints $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[node,lan,redis,gateway,transformers,dev]"
	touch $(STAMP)

install: $(STAMP)

# Rebuild llama.cpp (for example after changing DELLM_LLAMA_SIMD=avx2|avx512|auto).
llama: $(STAMP)
	$(PYTHON) scripts/build_llama.py --constraints $(CONSTRAINTS) --force

# The generated code imports itself as dellm.protos, so protoc runs in a scratch tree laid out the
# way the package is installed. protos-check compares: CI fails when the committed code is stale.
define GENERATE_PROTOS
tmp=$$(mktemp -d) && mkdir -p $$tmp/dellm/protos && cp protos/dellm.proto $$tmp/dellm/protos/ && \
  (cd $$tmp && $(CURDIR)/$(PYTHON) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
    dellm/protos/dellm.proto)
endef

protos: $(STAMP)
	@$(GENERATE_PROTOS) && for f in $(PROTO_OUT); do cp $$tmp/dellm/$$f $$f; done && echo "regenerated $(PROTO_OUT)"

protos-check: $(STAMP)
	@$(GENERATE_PROTOS) && \
	  for f in $(PROTO_OUT); do cmp -s $$f $$tmp/dellm/$$f || { echo "$$f is stale: run 'make protos' and commit"; exit 1; }; done && \
	  echo "generated protobuf code is up to date"

models: $(STAMP)
	$(PYTHON) -m dellm.client.cli models pull $(MODELS_FOR_TESTS)

doctor: $(STAMP)
	$(PYTHON) -m dellm.client.cli doctor

demo: $(STAMP)
	$(PYTHON) -m dellm.client.cli demo

# Coordinator and nodes find each other by mDNS alone, inside a private network namespace.
demo-lan: $(STAMP)
	$(PYTHON) -m dellm.client.cli demo --discovery mdns

test: $(STAMP) protos-check lint models
	DELLM_REQUIRE_MODELS=1 $(PYTHON) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PYTHON) -m pytest -q -m "not model and not slow"

# mypy reads the code under its installed names (dellm.coordinator, ...) through a tree of links.
lint: $(STAMP)
	$(PYTHON) -m ruff check .
	@rm -rf build/typecheck && mkdir -p build/typecheck/dellm && \
	  for p in protos coordinator node client; do ln -s $(CURDIR)/$$p build/typecheck/dellm/$$p; done
	cd build/typecheck && MYPYPATH=. $(CURDIR)/$(PYTHON) -m mypy --config-file $(CURDIR)/pyproject.toml \
	  -p dellm.protos -p dellm.coordinator -p dellm.node -p dellm.client
	cd build/typecheck && MYPYPATH=. $(CURDIR)/$(PYTHON) -m mypy --config-file $(CURDIR)/pyproject.toml \
	  --strict --follow-imports=silent -p dellm.coordinator.pipeline
	$(PYTHON) scripts/import_graph.py --check

# The performance suite (issue 6), then BENCHMARKS.md regenerated from every report in bench-results/.
# About 15 minutes on 2 cores; each script stops with a message (and records the failure) if a run fails.
bench: $(STAMP) models
	$(PYTHON) scripts/bench_overhead.py --rounds 300
	$(PYTHON) scripts/bench_parallel.py --ks 1,2,4,8,16 --delay 0.2 --rounds 5
	$(PYTHON) scripts/bench_routing_scale.py --sizes 10,100,1000,10000 $$(command -v redis-server >/dev/null && echo --redis)
	$(PYTHON) scripts/bench_throughput.py --nodes 20 --clients 64 --seconds 20
	$(PYTHON) scripts/bench_token_pace.py --rounds 5
	$(PYTHON) scripts/bench_seed_query.py --runs 5
	$(PYTHON) scripts/bench_seed_query.py --alone --runs 5
	$(PYTHON) scripts/bench_gateway.py --rounds 300 --screenshot bench-results/gateway_status_page.png
	$(MAKE) bench-report

bench-report: $(STAMP)
	$(PYTHON) scripts/bench_markdown.py

bench-seed: $(STAMP)
	$(PYTHON) scripts/bench_seed_query.py

bench-discovery: $(STAMP)
	$(PYTHON) scripts/bench_discovery.py

clean:
	rm -rf $(STAMP) build/typecheck

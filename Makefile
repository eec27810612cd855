# DELLM: `make demo` runs the main job, `make test` runs the tests. Both install what they need.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PROTO_OUT = protos/dellm_pb2.py protos/dellm_pb2.pyi protos/dellm_pb2_grpc.py
MODELS_FOR_TESTS = qwen2.5-coder-0.5b-instruct gemma-3-270m smollm2-135m-instruct
STAMP = .install.stamp
PROTOC = $(PYTHON) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=.

.PHONY: install demo demo-lan bench bench-report bench-discovery test test-fast protos protos-check models lint bench-seed clean

# torch comes first, pinned, from the CPU build on disk: otherwise the transformers extra
# would pull a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev,transformers]"
	touch $(STAMP)

install: $(STAMP)

protos: $(STAMP)
	$(PROTOC) protos/dellm.proto

# Regenerate into a scratch folder and compare: fails when the committed code is stale.
protos-check: $(STAMP)
	@tmp=$$(mktemp -d) && mkdir -p $$tmp/protos && cp protos/dellm.proto $$tmp/protos/ && \
	  (cd $$tmp && $(PROTOC) protos/dellm.proto) && \
	  for f in $(PROTO_OUT); do cmp -s $$f $$tmp/$$f || { echo "$$f is stale: run 'make protos' and commit"; exit 1; }; done && \
	  echo "generated protobuf code is up to date"

models: $(STAMP)
	$(PYTHON) -m client.cli models pull $(MODELS_FOR_TESTS)

demo: $(STAMP)
	$(PYTHON) -m client.cli demo

# Coordinator and nodes find each other by mDNS alone, inside a private network namespace.
demo-lan: $(STAMP)
	$(PYTHON) -m client.cli demo --discovery mdns

test: $(STAMP) protos-check lint models
	DELLM_REQUIRE_MODELS=1 $(PYTHON) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PYTHON) -m pytest -q -m "not model and not slow"

lint: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy coordinator node client

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
	$(MAKE) bench-report

bench-report: $(STAMP)
	$(PYTHON) scripts/bench_markdown.py

bench-seed: $(STAMP)
	$(PYTHON) scripts/bench_seed_query.py

bench-discovery: $(STAMP)
	$(PYTHON) scripts/bench_discovery.py

clean:
	rm -f $(STAMP)

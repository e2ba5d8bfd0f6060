# plait: `make demo` runs a local mesh, `make test` runs the tests, `make lint` checks.
# The interpreter .venv is made from: the distribution's python3.11 when there is one
# (what the README's fresh Debian machine has; Debian's links libpython in and is built
# with PGO and LTO: the proxy's request path takes 5% fewer instructions on it than on a
# shared, unoptimized build such as pyenv's default; benchmarks/PROFILE.md, "Session 4"),
# else the first python3.11 on PATH, else python3. `make PY=...` overrides.
PY ?= $(firstword $(wildcard /usr/bin/python3.11) python3.11)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The request path compiled with mypyc (scripts/build_native.py; plait.proxy.native uses
# it only while it matches the sources, else the proxy runs them interpreted).
NATIVE := src/plait/proxy/_compiled/stamp.json

# Pure cores checked by mypy --strict (see STYLE.md).
CORES := src/plait/model src/plait/xds src/plait/control/registry.py src/plait/ca \
         src/plait/control/rotation.py src/plait/control/ca_plane.py src/plait/control/guard.py \
         src/plait/control/cache.py src/plait/control/watch.py \
         src/plait/proxy/lkg.py src/plait/proxy/guard.py src/plait/proxy/bootstrap.py \
         $(addprefix src/plait/proxy/,runtime.py lb.py router.py via.py metrics.py accesslog.py \
           proxy_status.py xds_decode.py xds_subset.py http1_checks.py http1_shapes.py http1_attempt.py http1_route.py \
           xds_decode_listener.py xds_decode_route.py xds_decode_cluster.py \
           xds_decode_endpoint.py xds_decode_tls.py xds_schema.py xds_schema_gen.py \
           http1_checks_common.py http1_checks_request.py http1_checks_response.py \
           peer_identity.py tls.py rbac.py deadlines.py bootstrap_fields.py ads_h2_frames.py ads_h2_hpack.py \
           tls_transport.py bootstrap_reader.py observe.py http1_whole.py write_behind.py) \
         src/plait/identity/renewal.py src/plait/identity/x509_reader.py src/plait/identity/pem_keys.py src/plait/identity/der.py src/plait/identity/keys.py \
         src/plait/identity/keygen.py src/plait/proxy/native.py

.PHONY: demo test lint bench clean deps native

$(STAMP): pyproject.toml
	@py=$(PY); command -v $$py >/dev/null || py=python3; \
	  if ! test -x $(BIN)/python; then \
	    $$py -c 'import ensurepip' 2>/dev/null || ./scripts/install-debian-deps --venv; \
	    echo "creating $(VENV) with $$py"; $$py -m venv $(VENV); \
	  fi
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

deps:
	@./scripts/install-debian-deps

$(NATIVE): $(STAMP) $(shell find src/plait -name '*.py') scripts/build_native.py
	@./scripts/install-debian-deps --native
	$(BIN)/python scripts/build_native.py

native: $(NATIVE)

# The demo runs without a compiler too: the proxies then run the interpreted sources.
demo: $(STAMP)
	@$(MAKE) --no-print-directory native || \
	  echo "make native failed: the demo's proxies run the interpreted request path"
	$(BIN)/plait up

# The suite runs on what ships (compiled), then the proxy's tests once more on the
# interpreted sources: what runs where no compiler was there (PLAIT_PURE=1).
test: $(STAMP) deps native
	$(BIN)/python scripts/build_native.py --check
	PLAIT_EXPECT_REQUEST_PATH=compiled $(BIN)/pytest -q -n 2 --dist loadfile tests benchmarks/tests
	PLAIT_PURE=1 PLAIT_EXPECT_REQUEST_PATH=interpreted $(BIN)/pytest -q -n 2 --dist loadfile \
	  tests/unit/proxy tests/integration/proxy tests/integration/mtls benchmarks/tests/test_bench_hotpath.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy --strict $(CORES)

bench: $(STAMP) native
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .plait .pytest_cache src/plait/proxy/_compiled

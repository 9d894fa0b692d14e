# Thin wrapper over CMake + CTest. `make test` does everything from a fresh clone.
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS       ?= $(shell nproc)

.PHONY: all deps build run test test-unit test-asan test-fuzz interop-deps bench-crypto bench-client bench clean

all: build

deps:
	@scripts/install-deps.sh

# npm packages the tests drive (reference implementations, the ws client), from their lockfiles.
NODE_TEST_DIRS := tests/interop tests/ws tests/e2e
interop-deps: deps
	@for d in $(NODE_TEST_DIRS); do \
	  if [ ! -f $$d/node_modules/.package-lock.json ] || [ $$d/package-lock.json -nt $$d/node_modules/.package-lock.json ]; then \
	    (cd $$d && npm ci --ignore-scripts --no-audit --no-fund) || exit 1; \
	  fi; \
	done

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# parleyd on 127.0.0.1:7443 with its data in ./var and codes in ./var/sms.log.
run: build
	@mkdir -p var
	$(BUILD)/parleyd --listen 127.0.0.1:7443 --data ./var --sms file:./var/sms.log

# Everything: unit + interop tests, then the same under ASan+UBSan, then short fuzz runs.
test: build interop-deps
	cd $(BUILD) && ctest --output-on-failure
	$(MAKE) test-asan
	$(MAKE) test-fuzz

test-unit: build
	cd $(BUILD) && ctest --output-on-failure -L unit

test-asan: deps interop-deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DPARLEY_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -L "unit|interop|e2e"

test-fuzz: deps
	@CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPARLEY_FUZZ=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS)
	cd $(FUZZ_BUILD) && ctest --output-on-failure -L fuzz

bench-crypto: build interop-deps
	@scripts/bench-crypto.sh $(BUILD)

# The client's cost of end-to-end encryption, with its SQLite store (no network).
bench-client: build
	@$(BUILD)/parley-bench-client

# parleyd under load (parley-bench's standard suite, docs/bench.md): about 2 minutes;
# writes bench/results/<date>-<commit>.json, fails if any run does.
bench: build
	@scripts/bench.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)

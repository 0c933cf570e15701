# edgegw: the two quick-start targets set up everything on a fresh Debian / Raspberry Pi OS machine.
#   make demo   - system packages + venv, then the whole path on embedded defaults (bounded run)
#   make test   - system packages + venv, then the test suite (the exact command CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
APT_PACKAGES = python3-venv systemd mosquitto socat libcoap3-bin python3-gi gir1.2-gst-rtsp-server-1.0 \
               gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly \
               gstreamer1.0-libav gstreamer1.0-tools fuse3 lrzsz chromium postgresql valgrind \
               libfaketime
DEMO_ARGS ?=

.PHONY: demo test system-deps venv lint bench bench-perf fuzz powercut soak clean bundle install-test-debootstrap

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,ml,camera,fuzz]'
	touch $(STAMP)

venv: $(STAMP)

demo: system-deps venv
	$(PY) -m examples.demo $(DEMO_ARGS)

# the suite on pytest-xdist workers, split by tests/conftest.py (docs/testing.md);
# TEST_PARALLEL= make test runs it serially
TEST_PARALLEL ?= -n 3 --dist loadgroup
test: system-deps venv
	$(PY) -m pytest $(TEST_PARALLEL) tests

lint: venv
	$(VENV)/bin/ruff check .
	$(PY) tools/typecheck.py

# coverage-guided fuzzing (atheris): FUZZ_SECONDS per target; new inputs go to a scratch dir,
# crashes to fuzz-out/TARGET/ (fix, then commit the input under fuzz/corpus/TARGET/)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= envelope codec ack config coap serial modbus
fuzz: venv
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz-out/$$t/new; echo "== fuzz $$t ($(FUZZ_SECONDS) s)"; \
	  $(PY) fuzz/run.py $$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
	    -artifact_prefix=fuzz-out/$$t/ fuzz-out/$$t/new fuzz/corpus/$$t || exit 1; \
	done

# the OTA software bundle: edgegw wheel + every dependency wheel + install.py (docs/ota.md);
# BUNDLE_ARGS="--platform manylinux2014_aarch64 --python-version 3.11" builds for a Raspberry Pi
BUNDLE_DIR ?= dist/bundle
BUNDLE_ARGS ?=
bundle: venv
	rm -rf $(BUNDLE_DIR)
	$(VENV)/bin/edgegw-cloud ota build-bundle --project . --out $(BUNDLE_DIR) $(BUNDLE_ARGS)

# the installer in a real debootstrapped Debian 12 root, run inside it with chroot (slow: not in
# CI, which runs tests/ota/test_installer.py on a root directory). The minbase tarball is cached.
DEBOOTSTRAP_CACHE ?= /var/cache/edgegw/debootstrap-bookworm.tgz
install-test-debootstrap: bundle
	sh tools/install_test_debootstrap.sh $(BUNDLE_DIR) $(DEBOOTSTRAP_CACHE)

bench: venv
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

# issue 13's goals in one run (~15 min on the 2-core dev machine; docs/performance.md): W1/W2
# beside ThingsBoard IoT Gateway (its venv is made on first use), memory at 100 x 20 with the
# import floor, Modbus instructions per poll, backlog drain beside raw paho, compression data
# sets, pipeline vs SQLite ceiling; prints one JSON report (goal, figure, ceiling or peer, met),
# keeps each bench's JSON in bench/results/perf/ and regenerates the README's goal table
bench-perf: venv
	$(PY) bench/perf_report.py --out bench/results/perf --readme README.md

# long reliability runs (not part of `make bench`): POWERCUT_CYCLES, SOAK_MINUTES
POWERCUT_CYCLES ?= 200
SOAK_MINUTES ?= 12
powercut: venv
	$(PY) bench/power_cut.py --cycles $(POWERCUT_CYCLES)

soak: venv
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) demo-data .pytest_cache fuzz-out

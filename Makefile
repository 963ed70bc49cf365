# meshcache: `make demo` shows it working, `make test` runs the whole suite.
# Both install what they need first (a .venv here; aria2, iproute2, fuse3 and nginx via apt when root).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench fuzz chaos clean system-deps

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,s3,bench,examples]'
	touch $(STAMP)

# System packages the benchmarks, lab tests and the status page test (chromium) use; installed only when missing and root.
system-deps:
	@missing=""; \
	command -v aria2c >/dev/null 2>&1 || missing="$$missing aria2"; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v tc >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v fusermount3 >/dev/null 2>&1 || missing="$$missing fuse3"; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: missing system packages:$$missing (not root: benchmarks that need them will say so)"; fi; \
	fi

demo: install
	$(PY) examples/demo.py

# A private, short base directory for tmp_path: pytest's shared /tmp/pytest-of-<user> is cleaned
# by any other pytest session on the host, and Unix socket paths must stay under 108 bytes.
test: install
	@d=$$(mktemp -d /tmp/mct-XXXXXX); \
	$(PY) -m pytest -q -p no:cacheprovider --basetemp=$$d tests; rc=$$?; rm -rf $$d; exit $$rc

bench: install
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(PY) $$b --quick || exit 1; done

fuzz: install
	$(PY) -m pytest -q tests/fuzz -p no:cacheprovider

# The chaos suite (long: about an hour; not CI): every scenario in chaos/ at its full size (the
# 60 s unauthenticated flood, 10,000 lies, 100 SIGKILLs, 1,000,000 fuzz inputs per decoder, the
# 10-minute soak...); figures go to docs/reliability.md. Short versions only when asked:
# `make chaos CHAOS_FLAGS=--quick`, or `python chaos/run.py NAME --quick` for one.
CHAOS_FLAGS ?=
chaos: install
	$(PIP) install -q atheris || echo "note: atheris did not install; fuzzing without coverage"
	$(PY) chaos/run.py $(CHAOS_FLAGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint clean extension

venv: $(STAMP)

# The venv is rebuilt only when its inputs change.
$(STAMP): pyproject.toml constraints.txt $(wildcard extensions/cauchy/setup.py extensions/cauchy/csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	$(MAKE) extension
	touch $(STAMP)

# The C++/CUDA Cauchy extension; a failed build never breaks ssmkit (it falls back to plain torch).
extension:
	-$(PY) -m pip install -q --no-build-isolation ./extensions/cauchy || echo "warning: the ssmkit Cauchy extension did not build; ssmkit falls back to the torch backends (see: ssmkit doctor)"

demo: $(STAMP)
	$(VENV)/bin/ssmkit train recipes/quick/s4d-shift.yaml

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q --timeout 900 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check ssmkit tests scripts

clean:
	rm -rf $(VENV) build *.egg-info

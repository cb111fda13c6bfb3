# Two commands do all the set-up on a fresh machine: `make reproduce` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PRESET ?= cpu
RESULTS ?= results
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

.PHONY: install reproduce test bench data clean

install: $(STAMP)

# Reinstall only when the package definition changes; the editable install picks up source edits by itself.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[pipeline,test]'  # everything: the science, the pipeline, the tests
	touch $@

# Fashion-MNIST, the dataset of the default CPU reproduction (see bnn/data for every place it is looked for).
data: $(STAMP)
	@$(PY) -m bnn.data.fashion_mnist_setup

reproduce: data
	$(VENV)/bin/wmhp reproduce --preset $(PRESET) --results-dir $(RESULTS)

test: data
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info

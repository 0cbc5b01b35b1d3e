# synthvit: `make demo` answers "does synthetic pre-training help?" at CPU size (two arms, compared);
# `make test` runs the linters and the tests.
# Both create .venv and install the pinned dependencies on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
TESTS_INSTALLED := $(VENV)/.tests-installed
export PATH := $(abspath $(BIN)):$(PATH)

# The CPU demo: does synthetic pre-training help? Two DVC experiments with one fine-tuning
# budget: fractal pre-training then fine-tuning, and the same fine-tuning from scratch (the
# second reuses the fractals and the pre-training: DVC skips both). The recipe is
# recipes.yaml's `demo` (`synthvit recipe demo` prints it); DEMO_ARGS go to both arms after
# it (the last -S of a key wins), e.g. DEMO_ARGS="-S data.name=imagefolder -S data.root=PATH".
DEMO_RECIPE ?= demo
DEMO_ARGS ?=
STAMP := $(shell date +%m%d-%H%M)
DEMO_NAME ?= demo-$(STAMP)
DEMO_OUTPUT ?= plots/demo

# The papers' table at CPU scale (docs/results.md): each row of PROOF_ROWS is the recipe
# proof-<row>, run for every seed as experiment $(PROOF_NAME)-<row>-s<seed>; then the
# pre-training budget curve (proof-budget-* rows, PROOF_BUDGET_SEEDS). `synthvit compare
# --over-seeds` prints the table and draws the figures into plots/proof/. PROOF_ARGS go to
# every run (e.g. the local dataset, as DEMO_ARGS). Runs stop at evaluate (the table needs
# no figures of each run). FractalDB comes before scratch: the scratch row's fractals and
# pre-training have the same params, so DVC restores them from its run cache.
PROOF_ROWS ?= fractaldb scratch ofdb onepfrac shuffled
PROOF_SEEDS ?= 0 1 2
PROOF_BUDGET_ROWS ?= budget-quarter budget-half
PROOF_BUDGET_SEEDS ?= 0
PROOF_ARGS ?= $(DEMO_ARGS)
PROOF_NAME ?= proof-$(STAMP)
PROOF_OUTPUT ?= plots/proof
PYTEST_ARGS ?=

.PHONY: install demo proof study-candidates study test lint no-dvc-running clean-venv browser-deps postgres-deps gpu-pack gpu-check

$(INSTALLED): requirements.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

$(TESTS_INSTALLED): $(INSTALLED) requirements-test.txt
	$(BIN)/python -m pip install -q -r requirements-test.txt -c constraints.txt
	@touch $@

install: $(INSTALLED)

# INSTALLED= skips the venv (the end-to-end test runs the target so, with the tools on PATH).
demo: $(INSTALLED) no-dvc-running
	dvc exp run -n $(DEMO_NAME)-synthetic $$(synthvit recipe $(DEMO_RECIPE)) -S finetune.init=pretrained $(DEMO_ARGS)
	dvc exp run -n $(DEMO_NAME)-scratch $$(synthvit recipe $(DEMO_RECIPE)) -S finetune.init=scratch $(DEMO_ARGS)
	@echo
	synthvit compare --arms $(DEMO_NAME)-synthetic $(DEMO_NAME)-scratch --output-dir $(DEMO_OUTPUT)
	@echo
	@echo "More figures (the last arm): plots/visualize/*.png; dvc exp show; dvc plots diff"

proof: $(INSTALLED) no-dvc-running
	@set -e; for seed in $(PROOF_SEEDS); do for row in $(PROOF_ROWS); do \
		echo "== $(PROOF_NAME)-$$row-s$$seed"; \
		dvc exp run -n $(PROOF_NAME)-$$row-s$$seed $$(synthvit recipe proof-$$row) -S seed=$$seed $(PROOF_ARGS) evaluate; \
	done; done
	@set -e; for seed in $(PROOF_BUDGET_SEEDS); do for row in $(PROOF_BUDGET_ROWS); do \
		echo "== $(PROOF_NAME)-$$row-s$$seed"; \
		dvc exp run -n $(PROOF_NAME)-$$row-s$$seed $$(synthvit recipe proof-$$row) -S seed=$$seed $(PROOF_ARGS) evaluate; \
	done; done
	@echo
	synthvit compare --source dvc --names '$(PROOF_NAME)-*' --over-seeds --output-dir $(PROOF_OUTPUT) --force --log
	synthvit compare --source dvc --names '$(PROOF_NAME)-scratch-*,$(PROOF_NAME)-budget-*,$(PROOF_NAME)-fractaldb-*' \
		--over-seeds --x pretrain --output-dir $(PROOF_OUTPUT)/budget --force --log

# The pre-training study (docs/study.md): does fractal pre-training help this ViT on a CPU? Every run is
# locked into results/ as soon as it ends, and a run already locked is skipped, so a stopped study
# resumes where it stopped (DVC's run cache restores finished stages, the resume state a cut one).
# 1. `make study-candidates`: each recipe pretrain-<name> pre-trains (131k image-steps) and is probed
#    on a validation split of the training images (never the test set): results/study-candidates.
# 2. `make study STUDY_PRETRAIN=pretrain-<chosen>`: that pre-training at each of STUDY_EPOCHS (x 4,096
#    images: 16k to 1M image-steps), each fine-tuned with the fine-tuning seeds STUDY_SEEDS, and the
#    scratch, mimetic and shuffled-label arms with the same seeds, scored on all test images: results/study.
STUDY_CANDIDATES ?= base mimetic 16cats 128cats wide-instances pool-augment colors
STUDY_PROBES ?= scratch mimetic
STUDY_PRETRAIN ?= pretrain-base
STUDY_EPOCHS ?= 4 16 64 256
STUDY_SEEDS ?= 0 1 2 3 4
STUDY_ARGS ?= $(DEMO_ARGS)
STUDY_LONGEST = $(lastword $(STUDY_EPOCHS))
# A run: `$(call study_run,NAME,GROUP/ROW,ARGS,TARGET)`, skipped when results/GROUP/NAME is locked.
study_run = test -d results/$(2)/$(1) || { echo "== $(2)/$(1)"; \
	dvc exp run -n $(1) $(3) $(STUDY_ARGS) $(4) && synthvit results lock $(1) --as $(2)/$(1); }

study-candidates: $(INSTALLED) no-dvc-running
	@set -e; for c in $(STUDY_CANDIDATES); do \
		$(call study_run,$$c,study-candidates,$$(synthvit recipe study-probe pretrain-$$c),finetune); done
	@set -e; for p in $(STUDY_PROBES); do \
		$(call study_run,probe-$$p,study-candidates,$$(synthvit recipe probe-$$p),finetune); done
	synthvit results show study-candidates

study: $(INSTALLED) no-dvc-running
	@set -e; for e in $(STUDY_EPOCHS); do for s in $(STUDY_SEEDS); do \
		$(call study_run,pretrained-e$$e-s$$s,study,$$(synthvit recipe study-finetune $(STUDY_PRETRAIN)) \
			-S pretrain.epochs=$$e -S finetune.seed=$$s,evaluate); done; done
	@set -e; for s in $(STUDY_SEEDS); do for init in scratch mimetic; do \
		$(call study_run,$$init-s$$s,study,$$(synthvit recipe study-finetune $(STUDY_PRETRAIN)) \
			-S pretrain.epochs=$(STUDY_LONGEST) -S finetune.init=$$init -S finetune.seed=$$s,evaluate); done; done
	@set -e; for s in $(STUDY_SEEDS); do \
		$(call study_run,shuffled-s$$s,study,$$(synthvit recipe study-finetune $(STUDY_PRETRAIN)) \
			-S pretrain.epochs=$(STUDY_LONGEST) -S pretrain.labels=shuffled -S finetune.seed=$$s,evaluate); done
	synthvit results show study

# `dvc exp run -S` writes its values into params.yaml before it finds out that another DVC
# command holds the repository's lock, and leaves them there: refuse to start instead.
no-dvc-running:
	@for pid in $$(pgrep -f 'dvc (repro|exp run|queue)' || true); do \
		if [ "$$(readlink /proc/$$pid/cwd 2>/dev/null)" = "$(CURDIR)" ]; then \
			echo "error: another DVC command (pid $$pid) runs in this repository: wait for it to end, then run make again"; \
			exit 2; \
		fi; \
	done

# The GPU check (docs/gpu-check.md). `make gpu-pack`, here: .gpu/ gets the wheels MLflow needs and the
# packed CIFAR-10, within the 64 MiB a lent GPU machine takes with the repository (carry .gpu).
# `make gpu-check` there, in one call of at most 9 minutes: every GPU step, each time-boxed, into
# $OUT/gpu-check.{json,log} (else gpu-check/). No venv: it runs the machine's python3 (its torch);
# here, without CUDA, the venv's, at test size. GPU_CHECK_ARGS: scripts/gpu_check.py --help.
GPU_CHECK_ARGS ?=
gpu-pack:
	python3 scripts/gpu_pack.py

gpu-check:
	python3 scripts/gpu_check.py $(GPU_CHECK_ARGS)

test: $(TESTS_INSTALLED) browser-deps postgres-deps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff: lint (pyflakes, pycodestyle, isort, bugbear, ...) and the formatter's check; pyproject.toml configures both.
lint: $(TESTS_INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Headless Chromium and its driver for the browser tests (tests/unit/test_app.py, tests/pipeline/test_demo.py), from Debian's
# packages: installed once (as root, or through sudo), a no-op when both are already there.
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; else \
		sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$sudo apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

# PostgreSQL server binaries for the team-tracking test (tests/pipeline/test_postgres_tracking.py, a
# throwaway cluster behind `mlflow server`), from Debian's packages: a no-op when initdb,
# pg_ctl and postgres are found on PATH or in /usr/lib/postgresql/*/bin.
postgres-deps:
	@missing=; for tool in initdb pg_ctl postgres; do \
		command -v $$tool >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/$$tool >/dev/null 2>&1 || missing="$$missing $$tool"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "PostgreSQL server not found (missing:$$missing): installing Debian's postgresql"; \
		sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$sudo apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	fi

clean-venv:
	rm -rf $(VENV)

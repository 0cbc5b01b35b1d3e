# synthvit: `make demo` answers "does fractal pre-training help?" at CPU size (three arms, compared with
# the study's locked answer); `make test` runs the linters and the tests.
# Both create .venv and install the pinned dependencies on first use.

# bash: the ledger reads its comma-separated sweep points with `read <<<`
SHELL := bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
TESTS_INSTALLED := $(VENV)/.tests-installed
export PATH := $(abspath $(BIN)):$(PATH)

# The CPU demo: does fractal pre-training help? Three DVC experiments, one fine-tuning recipe (the
# study's: recipes.yaml `demo`, `synthvit recipe demo` prints it): from the study's released
# backbone (results/study/backbone: 90 minutes of pre-training, restored from git instead of run
# again), from scratch, and from mimetic initialisation; then the comparison, beside the study's
# locked five-seed answer. PRETRAIN=fresh pre-trains that backbone again (about 90 minutes on 2
# cores) instead of taking the released one. DEMO_ARGS go to every arm after the recipe (the last
# -S of a key wins), e.g. DEMO_ARGS="-S data.name=imagefolder -S data.root=PATH".
PRETRAIN ?= released
DEMO_ARGS ?=
STAMP := $(shell date +%m%d-%H%M)
DEMO_NAME ?= demo-$(STAMP)
DEMO_OUTPUT ?= plots/demo
DEMO_ARMS ?= pretrained scratch mimetic
DEMO_RECIPES = demo $(if $(filter fresh,$(PRETRAIN)),study-pretrained)
DEMO_BACKBONE = $(if $(filter fresh,$(PRETRAIN)),-S finetune.backbone=models/pretrain.pt)

PYTEST_ARGS ?=
# pytest-xdist workers: one per core, whole files per worker (a module's built pipeline is built once),
# one torch thread each (tests/conftest.py), so two workers do not fight over the cores. TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto

.PHONY: install demo study-candidates study ledger test test-fast lint no-dvc-running clean-venv browser-deps postgres-deps gpu-pack gpu-check

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
	@test "$(PRETRAIN)" = fresh || test -f results/study/backbone/model.safetensors || { echo "error: \
	results/study/backbone (the study's released backbone) is missing: restore it (git checkout -- results), or \
	pre-train it again with make demo PRETRAIN=fresh"; exit 2; }
	@set -e; for init in $(DEMO_ARMS); do \
		echo "== $(DEMO_NAME)-$$init"; \
		dvc exp run -n $(DEMO_NAME)-$$init $$(synthvit recipe $(DEMO_RECIPES)) -S finetune.init=$$init $(DEMO_ARGS) \
			$(DEMO_BACKBONE) evaluate; \
	done
	@echo
	synthvit compare --arms $(addprefix $(DEMO_NAME)-,$(DEMO_ARMS)) --output-dir $(DEMO_OUTPUT)
	@if ls results/study/*/run.yaml >/dev/null 2>&1; then echo; \
		echo "The study's answer, five paired fine-tuning seeds (results/study, docs/study.md):"; \
		synthvit results show study; fi

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
# The candidate the validation probe chose (docs/study.md):
STUDY_PRETRAIN ?= pretrain-mimetic
STUDY_EPOCHS ?= 4 16 64 256
STUDY_SEEDS ?= 0 1 2 3 4
STUDY_ARGS ?= $(DEMO_ARGS)
STUDY_LONGEST = $(lastword $(STUDY_EPOCHS))
# The shuffled-label control pre-trains at this budget and pairs with pretrained-e<it>: 64 epochs (262k
# image-steps, about 23 minutes on 2 cores) rather than the longest, which would add 90 minutes per study.
STUDY_SHUFFLED_EPOCHS ?= 64
# A run: `$(call study_run,NAME,GROUP/ROW,ARGS,TARGET)`, skipped when results/GROUP/NAME is locked.
study_run = if ! test -d results/$(2)/$(1); then echo "== $(2)/$(1)"; \
	dvc exp run -n $(1) $(3) $(4) || exit 1; synthvit results lock $(1) --as $(2)/$(1) || exit 1; fi

study-candidates: $(INSTALLED) no-dvc-running
	@set -e; for c in $(STUDY_CANDIDATES); do \
		$(call study_run,$$c,study-candidates,$$(synthvit recipe study-probe pretrain-$$c) $(STUDY_ARGS),finetune); done
	@set -e; for p in $(STUDY_PROBES); do \
		$(call study_run,probe-$$p,study-candidates,$$(synthvit recipe probe-$$p) $(STUDY_ARGS),finetune); done
	synthvit results show study-candidates

study: $(INSTALLED) no-dvc-running
	@set -e; for e in $(STUDY_EPOCHS); do for s in $(STUDY_SEEDS); do \
		$(call study_run,pretrained-e$$e-s$$s,study,$$(synthvit recipe study-finetune $(STUDY_PRETRAIN)) \
			-S pretrain.epochs=$$e -S finetune.seed=$$s $(STUDY_ARGS),evaluate); done; done
	@set -e; for s in $(STUDY_SEEDS); do for init in scratch mimetic; do \
		$(call study_run,$$init-s$$s,study,$$(synthvit recipe study-finetune $(STUDY_PRETRAIN)) \
			-S pretrain.epochs=$(STUDY_LONGEST) -S finetune.init=$$init -S finetune.seed=$$s $(STUDY_ARGS),evaluate); \
		done; done
	@set -e; for s in $(STUDY_SEEDS); do \
		$(call study_run,shuffled-s$$s,study,$$(synthvit recipe study-finetune $(STUDY_PRETRAIN)) \
			-S pretrain.epochs=$(STUDY_SHUFFLED_EPOCHS) -S pretrain.labels=shuffled -S finetune.seed=$$s $(STUDY_ARGS),evaluate); \
		done
	synthvit results show study

# The claims ledger (docs/results.md): the seed projects' claims a CPU can check, locked into
# results/ledger (and the sweep into results/ledger-sweep), each skipped once locked. The absolute
# claims one seed each; linear against convolutional patching (MNIST, CIFAR-10) and learned
# against sin-cos positions (MNIST) with LEDGER_SEEDS as paired fine-tuning seeds. The sweep: a
# queued DVC study (`dvc exp run --queue`, `dvc queue start`) over patch size, heads and depth.
LEDGER_SEEDS ?= 0 1 2
LEDGER_MNIST_ARGS ?= -S data.root=data/mnist
LEDGER_CIFAR10_ARGS ?= $(DEMO_ARGS)
# patch size, heads, depth: half of the 2 x 2 x 2 design (each level of each factor twice, every pair of
# levels once), which estimates each main effect from four runs in half the CPU time; it holds the
# 88% claim's model (7-px patches, 4 heads, 6 blocks) at one epoch.
LEDGER_SWEEP ?= 7,4,6 7,2,2 4,4,2 4,2,6
ledger_run = $(call study_run,$(1),ledger,$$(synthvit recipe $(2)) -S finetune.seed=$(3) $(4),evaluate)

ledger: $(INSTALLED) no-dvc-running
	@set -e; $(call ledger_run,mnist-p7-s0,ledger-mnist-vit-scratch-p7,0,$(LEDGER_MNIST_ARGS))
	@set -e; for s in $(LEDGER_SEEDS); do \
		$(call ledger_run,mnist-linear-s$$s,ledger-mnist-vit-scratch,$$s,$(LEDGER_MNIST_ARGS)); \
		$(call ledger_run,mnist-conv-s$$s,ledger-mnist-vit-scratch-conv,$$s,$(LEDGER_MNIST_ARGS)); \
		$(call ledger_run,mnist-sincos-s$$s,ledger-mnist-vit-scratch-sincos,$$s,$(LEDGER_MNIST_ARGS)); \
		$(call ledger_run,cifar10-linear-s$$s,ledger-cifar10-vit-scratch,$$s,$(LEDGER_CIFAR10_ARGS)); \
		$(call ledger_run,cifar10-conv-s$$s,ledger-cifar10-vit-scratch-conv,$$s,$(LEDGER_CIFAR10_ARGS)); done
	@set -e; for point in $(LEDGER_SWEEP); do IFS=, read p h d <<< "$$point"; name=sweep-p$$p-h$$h-d$$d; \
		test -d results/ledger-sweep/$$name || dvc exp run --queue -n $$name $$(synthvit recipe ledger-mnist-sweep) \
			-S model.patch_size=$$p -S model.num_heads=$$h -S model.depth=$$d $(LEDGER_MNIST_ARGS) evaluate; done
	dvc queue start -j 1 && while dvc queue status | grep -qE 'Queued|Running'; do sleep 20; done
	@set -e; for point in $(LEDGER_SWEEP); do IFS=, read p h d <<< "$$point"; name=sweep-p$$p-h$$h-d$$d; \
		test -d results/ledger-sweep/$$name || synthvit results lock $$name --as ledger-sweep/$$name; done
	synthvit compare --source dvc --names 'sweep-*' --output-dir results/ledger-sweep --force
	synthvit results show ledger

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
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The inner loop: the unit tests that build no DVC repository and drive no browser (the `e2e` marker).
test-fast: $(TESTS_INSTALLED) lint
	$(BIN)/python -m pytest tests/unit -m "not e2e" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

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

# synthvit: `make demo` answers "does synthetic pre-training help?" at CPU size (two arms, compared); `make test` runs the tests.
# Both create .venv and install the pinned dependencies on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
TESTS_INSTALLED := $(VENV)/.tests-installed
export PATH := $(abspath $(BIN)):$(PATH)

# The CPU demo (README, "The demo"): does synthetic pre-training help? Two DVC experiments
# with one fine-tuning budget: fractal pre-training then fine-tuning, and the same
# fine-tuning from scratch. The second arm reuses the fractals and the pre-training (DVC
# skips both: same params). Scored on the whole test split, compared by `synthvit compare`.
# The size knobs below are the only difference between `make demo` (budget: 15 minutes on
# 2 CPU cores: 10 min 4 s measured, README) and `make proof` (the longer version).
DEMO_INSTANCES ?= 32
DEMO_FINETUNE_EPOCHS ?= 8
DEMO_TRAIN_PER_CLASS ?= 250
proof: DEMO_INSTANCES = 64
proof: DEMO_FINETUNE_EPOCHS = 20
proof: DEMO_TRAIN_PER_CLASS = 500
DEMO_OVERRIDES = \
	-S synthetic.num_classes=32 -S synthetic.instances_per_class=$(DEMO_INSTANCES) -S synthetic.num_points=10000 \
	-S synthetic.fill_rate=0.1 -S synthetic.patch=full \
	-S model.embed_dim=128 -S model.depth=6 -S model.num_heads=4 -S model.patch_embed=conv \
	-S pretrain.epochs=40 -S pretrain.batch_size=64 -S pretrain.warmup_epochs=2 -S pretrain.lr=1e-3 \
	-S pretrain.mixup_alpha=0 -S pretrain.cutmix_alpha=0 -S pretrain.random_erasing=0 -S pretrain.crop_scale=[0.6,1.0] \
	-S finetune.epochs=$(DEMO_FINETUNE_EPOCHS) -S finetune.batch_size=64 -S finetune.warmup_epochs=1 -S finetune.lr=1e-3 \
	-S finetune.mixup_alpha=0 -S finetune.cutmix_alpha=0 -S finetune.random_erasing=0 -S finetune.auto_augment=none \
	-S finetune.curve_test_per_class=200 \
	-S data.train_per_class=$(DEMO_TRAIN_PER_CLASS) -S data.val_fraction=0
# Extra `dvc exp run` arguments for both arms (the last -S of a key wins).
DEMO_ARGS ?=
STAMP := $(shell date +%Y%m%d-%H%M%S)
DEMO_NAME ?= demo-$(STAMP)
proof: DEMO_NAME = proof-$(STAMP)
DEMO_OUTPUT ?= plots/demo
PYTEST_ARGS ?=

.PHONY: install demo proof test clean-venv browser-deps postgres-deps

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
demo: $(INSTALLED)
	dvc exp run -n $(DEMO_NAME)-synthetic $(DEMO_OVERRIDES) -S finetune.init=pretrained $(DEMO_ARGS)
	dvc exp run -n $(DEMO_NAME)-scratch $(DEMO_OVERRIDES) -S finetune.init=scratch $(DEMO_ARGS)
	@echo
	synthvit compare --arms $(DEMO_NAME)-synthetic $(DEMO_NAME)-scratch --output-dir $(DEMO_OUTPUT)
	@echo
	@echo "More figures (the last arm): plots/visualize/*.png; dvc exp show; dvc plots diff"

proof: demo

test: $(TESTS_INSTALLED) browser-deps postgres-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Headless Chromium and its driver for the browser tests (tests/test_app.py, test_demo.py), from Debian's
# packages: installed once (as root, or through sudo), a no-op when both are already there.
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; else \
		sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$sudo apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

# PostgreSQL server binaries for the team-tracking test (tests/test_postgres_tracking.py, a
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

# Install into .venv and run the tests. Override TORCH to pick another torch build,
# e.g. `make install TORCH="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121"`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint browser demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev,serve,export]"
	touch $(STAMP)

lint: install
	$(BIN)/ruff check mtcli tests bench

test: lint browser
	$(BIN)/python -m pytest

# The serve page test drives Debian's headless Chromium; install it when missing and we are root.
browser:
	@if [ ! -x /usr/bin/chromedriver ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

# The quick start: train a small English->French model (~12 minutes on a 2-core CPU), translate, score.
demo: install
	$(BIN)/mtcli train configs/demo.yaml
	$(BIN)/mtcli translate "I love you" "Where is the train station?" "I don't know what to do." \
		"She is reading a book in the garden." "We are going to the beach tomorrow."
	@echo "test BLEU of the demo model (Tatoeba test split, beam search):" >&2
	$(BIN)/mtcli score --model runs/demo/model --src runs/demo/data/test.src.txt runs/demo/data/test.tgt.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Postroom developer entry points. `make run` and `make test` work on a
# fresh machine: they create .venv, install what they need, and go.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint bench peers clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

## run: start Postroom on its embedded defaults (SQLite + local spool in
## ./postroom-data, 127.0.0.1 ports: SMTP 2525/2587/2465, POP3 2110/2995,
## IMAP 2143/2993), with ./postroom.toml if there is one, else
## postroom.dev.toml (local domain example.test, nothing leaves the machine)
run: $(STAMP)
	$(VENV)/bin/postroom -c $(if $(wildcard postroom.toml),postroom.toml,postroom.dev.toml) serve

## peers: install the real mail peers tests and benchmarks talk to
peers:
	@bash scripts/install-peers.sh

## lint: ruff on everything, mypy on the package (strict for the cores)
lint: $(STAMP)
	$(VENV)/bin/ruff check postroom tests bench
	$(VENV)/bin/mypy postroom

## test: lint, then the whole suite (loopback only)
test: $(STAMP) peers lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

## bench: Postroom side by side with Postfix, aiosmtpd and Dovecot (not a
## test): acceptance, relaying end to end (smtp-source -> server ->
## smtp-sink), then mailbox downloads over POP3 and IMAP
bench: $(STAMP) peers
	$(PY) -m bench.smtp_accept $(BENCH_ARGS)
	$(PY) -m bench.relay $(BENCH_ARGS)
	$(PY) -m bench.mailbox $(BENCH_ARGS)

clean:
	rm -rf $(VENV) postroom-data .pytest_cache .mypy_cache .ruff_cache

# Shortcuts; dev.sh does the work (it needs only bash on a fresh Debian machine).
.PHONY: setup demo test lint bench
setup: ; ./dev.sh setup
demo: ; ./dev.sh demo
test: ; ./dev.sh test
lint: ; ./dev.sh lint
bench: setup
	for b in bench/*.py; do .venv/bin/python $$b || exit 1; done

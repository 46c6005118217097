# Targets behind ./dev.sh (which installs the apt packages first). All state lives in .venv and .stamps.
PY      := /usr/bin/python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMPS  := .stamps
BUILD_INPUTS := pyproject.toml setup.py $(wildcard native/*.c native/*.h native/python/*.c)

.PHONY: setup demo test clean

HELLO   := demo_apps/build/hello_usdt

setup: $(STAMPS)/install $(HELLO)

$(HELLO): demo_apps/hello_usdt.c
	@mkdir -p demo_apps/build
	gcc -O2 -g -o $@ $<

$(VPY):
	$(PY) -m venv --system-site-packages $(VENV)

$(STAMPS)/install: $(VPY) $(BUILD_INPUTS)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@mkdir -p $(STAMPS) && touch $@

# The main job: check the machine, then trace the bundled demo services for real.
demo: setup
	$(VENV)/bin/usdtkit doctor
	$(VENV)/bin/usdtkit demo

test: setup
	$(VPY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(STAMPS) build demo_apps/build usdtkit/_native/*.so *.egg-info

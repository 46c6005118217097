# Targets behind ./dev.sh (which installs the apt packages first). All state lives in .venv and .stamps.
PY      := /usr/bin/python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMPS  := .stamps
BUILD_INPUTS := pyproject.toml setup.py $(wildcard native/*.c native/*.h)

.PHONY: setup demo test clean

setup: $(STAMPS)/install

$(VPY):
	$(PY) -m venv --system-site-packages $(VENV)

$(STAMPS)/install: $(VPY) $(BUILD_INPUTS)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@mkdir -p $(STAMPS) && touch $@

DEMO_BIN := demo_apps/build/hello_usdt

$(DEMO_BIN): demo_apps/hello_usdt.c
	@mkdir -p demo_apps/build
	gcc -O2 -g -o $@ $<

# The main job: check the machine, then trace the bundled demo app for real.
demo: setup $(DEMO_BIN)
	$(VENV)/bin/usdtkit doctor
	$(VENV)/bin/usdtkit trace -s arg1 -c '$(DEMO_BIN) 5 usdtkit' 'usdt::hello:greet'
	$(VENV)/bin/usdtkit hist -v arg1 -c '$(DEMO_BIN) 50' 'usdt::hello:tick'

test: setup
	$(VPY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(STAMPS) build demo_apps/build usdtkit/_native/*.so *.egg-info

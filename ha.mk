# A real Home Assistant for tests/integration/test_home_assistant.py (docs/mqtt.md, "Testing with
# a real Home Assistant"). Included from the Makefile; `make test` builds it and runs the test.
# 2024.3.3 is the newest Home Assistant that installs on Python 3.11 (later ones need 3.12). Its own
# venv: HA pins hundreds of packages (and paho-mqtt 1.6, where inferd needs 2.x). The second and
# third pip lines are the requirements of the integrations HA always loads (without the frontend it
# starts in recovery mode); the test starts it with --skip-pip, so nothing is installed at run time.
PYTHON  ?= python3
VENV    ?= .venv
HA_VENV := .venv-ha
HA_PIP  := $(HA_VENV)/bin/python -m pip --disable-pip-version-check -q
HA_REQS := 'homeassistant==2024.3.3' 'paho-mqtt==1.6.1'
HA_BASE := 'home-assistant-frontend==20240307.0' 'Pillow==10.2.0' 'janus==1.0.0' \
	'psutil-home-assistant==0.0.1' 'securetar==2024.2.1'
HA_MORE := 'SQLAlchemy==2.0.27' 'fnv-hash-fast==0.5.0' 'numpy==1.26.0' 'PyTurboJPEG==1.7.1' 'josepy<2'
HA_TEST := tests/integration/test_home_assistant.py

.PHONY: ha-venv test-ha
ha-venv: $(HA_VENV)/.installed

$(HA_VENV)/.installed: ha.mk | .python-venv-ok
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "error: Home Assistant 2024.3.3 is tested here on Python 3.11: PYTHON=python3.11" >&2; exit 1; }
	test -x $(HA_VENV)/bin/python || $(PYTHON) -m venv $(HA_VENV)
	echo '*' > $(HA_VENV)/.gitignore  # never committed (what python3.13's venv writes itself)
	$(HA_PIP) install $(HA_REQS)
	c=$$($(HA_VENV)/bin/python -c 'import homeassistant, os; \
	  print(os.path.join(os.path.dirname(homeassistant.__file__), "package_constraints.txt"))') && \
	$(HA_PIP) install -c $$c $(HA_BASE) && \
	$(HA_PIP) install -c $$c $(HA_MORE)
	$(HA_VENV)/bin/hass --version
	@touch $@

# Mosquitto (.test-tools-ok) and a real Home Assistant; about 30 s (docs/mqtt.md). INFERD_CI=1
# makes a missing .venv-ha a failure instead of a skip.
test-ha: $(VENV)/.installed $(HA_VENV)/.installed .test-tools-ok
	$(VENV)/bin/python -m pytest -q -s -p no:cacheprovider -m homeassistant $(HA_TEST)

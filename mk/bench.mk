# The benchmark of issue 5 (bench/README.md). Included by the Makefile (-include mk/*.mk).
# The peers and the harness's tools live in their own virtualenv, bench/.peers/. botrix and the
# bare loop run from bench/.botrix/: botrix installed as its users install it (`pip install .`,
# no dev tools, bytecode compiled), rebuilt whenever a file of the package changes. The dev
# venv would measure test tools too: structlog imports rich when it is there (3.5 MB of RSS).

PEERS_VENV  := bench/.peers
PEERS_STAMP := $(PEERS_VENV)/.installed
BOTRIX_VENV  := bench/.botrix
BOTRIX_STAMP := $(BOTRIX_VENV)/.installed

$(BOTRIX_STAMP): pyproject.toml $(shell find botrix -type f -not -path '*/__pycache__/*')
	test -x $(BOTRIX_VENV)/bin/python || $(PYTHON) -m venv $(BOTRIX_VENV)
	$(BOTRIX_VENV)/bin/pip install -q --upgrade pip
	$(BOTRIX_VENV)/bin/pip install -q .
	$(BOTRIX_VENV)/bin/pip install -q --force-reinstall --no-deps .
	touch $@

.PHONY: bench bench-quick bench-peers

$(PEERS_STAMP): bench/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q --upgrade pip
	$(PEERS_VENV)/bin/pip install -q -r bench/requirements-peers.txt
	touch $@

## bench-peers: the virtualenv of the compared systems and the harness (bench/.peers)
bench-peers: $(PEERS_STAMP)

## bench: botrix beside SAQ, arq, streaq, Dramatiq, Celery, RQ and the bare loop (~20 min);
## writes bench/results/ and docs/performance.md. BENCH_ARGS passes options to bench/run.py.
bench: $(BOTRIX_STAMP) redis-server bench-peers
	$(PEERS_VENV)/bin/python bench/run.py --venv $(BOTRIX_VENV) $(BENCH_ARGS)

## bench-quick: botrix alone (and the bare loop as its yardstick) with small N (~1 min)
bench-quick: $(BOTRIX_STAMP) redis-server bench-peers
	$(PEERS_VENV)/bin/python bench/run.py --quick --venv $(BOTRIX_VENV) $(BENCH_ARGS)

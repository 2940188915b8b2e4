# The benchmark of issue 5 (bench/README.md). Included by the Makefile (-include mk/*.mk).
# The peers and the harness's tools live in their own virtualenv, bench/.peers/; botrix and the
# bare loop run from the project's $(VENV).

PEERS_VENV  := bench/.peers
PEERS_STAMP := $(PEERS_VENV)/.installed

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
bench: venv redis-server bench-peers
	$(PEERS_VENV)/bin/python bench/run.py --venv $(VENV) $(BENCH_ARGS)

## bench-quick: botrix alone (and the bare loop as its yardstick) with small N (~1 min)
bench-quick: venv redis-server bench-peers
	$(PEERS_VENV)/bin/python bench/run.py --quick --venv $(VENV) $(BENCH_ARGS)

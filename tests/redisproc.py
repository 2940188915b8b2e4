"""A real redis-server for the tests: own port, own temp dir, stoppable and restartable."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode()


def ephemeral_low() -> int:
    """The first port the kernel hands out as a connection's local port."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port below the ephemeral range: a server a test stops and starts again must get
    its port back, and a client's outgoing connection made meanwhile could otherwise take it."""
    low = ephemeral_low()
    for _ in range(200):
        port = random.randint(max(1025, low - 12_000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10,000 above it) is free too, both below the
    ephemeral range: a node restarted by a test must get both back, and a client's outgoing
    connection made meanwhile could otherwise take either (seen once: the bus port)."""
    low = ephemeral_low()
    for _ in range(200):
        port = random.randint(max(1025, low - 20_000), low - 10_001)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    """One redis-server process; ``stop``/``start`` keep the port and data directory."""

    def __init__(
        self, workdir: Path, *, appendonly: bool = False, extra: tuple[str, ...] = (), port: int | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run `make test` (it installs it)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.extra = extra
        self.password: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--maxmemory-policy",
            "noeviction",
            *self.extra,
        ]
        if self.password:
            args += ["--requirepass", self.password]
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=self.port, password=self.password, socket_timeout=1) as probe:
                    probe.ping()
                return
            except redis.RedisError as exc:
                if self.proc.poll() is not None:
                    output = (self.dir / "redis.log").read_text()
                    raise RuntimeError(f"redis-server exited: {output}") from exc
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        self.proc.wait(timeout=20)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=10)


class RedisClusterServers:
    """Three redis-server processes made into a Redis Cluster (no replicas), slots split evenly.

    Built with CLUSTER ADDSLOTS and MEET rather than redis-cli, which Redis 6.2's test build
    (make test-redis62) does not ship.
    """

    SLOTS = 16384

    def __init__(self, workdir: Path, nodes: int = 3, *, full_coverage: bool = True) -> None:
        coverage = ("--cluster-require-full-coverage", "yes" if full_coverage else "no")
        self.nodes = [
            RedisServer(
                workdir / f"node-{i}",
                extra=("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{i}.conf", *coverage),
                port=free_cluster_port(),
            )
            for i in range(nodes)
        ]

    @property
    def url(self) -> str:
        """Any node's URL: the cluster client finds the others from it."""
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        share = self.SLOTS // len(self.nodes)
        for i, node in enumerate(self.nodes):
            last = self.SLOTS - 1 if i == len(self.nodes) - 1 else (i + 1) * share - 1
            with node.client() as r:
                r.execute_command("CLUSTER ADDSLOTS", *range(i * share, last + 1))
        self._meet()
        self.wait_ready(meet=True)

    def _meet(self) -> None:
        with self.nodes[0].client() as first:
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER MEET", "127.0.0.1", node.port)

    def wait_ready(self, *, meet: bool = False) -> None:
        """Until every node serves and knows every slot (also after a restart of the nodes).

        With ``meet``, the introductions are sent again every few seconds: a node forgets a
        handshake that does not finish in time (a loaded machine), and never tries it again.
        """
        deadline = time.monotonic() + 45
        next_meet = time.monotonic() + 5
        while time.monotonic() < deadline:
            if all(self._ready(node) for node in self.nodes):
                return
            if meet and time.monotonic() >= next_meet:
                self._meet()
                next_meet = time.monotonic() + 5
            time.sleep(0.1)
        states = []
        for node in self.nodes:
            with node.client() as r:
                info = r.cluster("INFO")
                states.append(
                    (node.port, info.get("cluster_state"), info.get("cluster_known_nodes"),
                     info.get("cluster_slots_assigned"))
                )  # fmt: skip
        raise RuntimeError(f"the Redis Cluster did not come up: (port, state, known, slots) {states}")

    def _ready(self, node: RedisServer) -> bool:
        with node.client() as r:
            info = r.cluster("INFO")
            known = r.cluster("NODES")
        # Every node must know every slot's owner: without full coverage a node says "ok" as
        # soon as its own slots are served.
        assigned = int(info.get("cluster_slots_assigned", 0))
        return bool(
            info.get("cluster_state") == "ok" and assigned == self.SLOTS and len(known) == len(self.nodes)
        )

    def node_of(self, key: str) -> int:
        """The index of the node that owns ``key``'s slot."""
        with self.nodes[0].client() as r:
            slot = int(r.execute_command("CLUSTER KEYSLOT", key))
        share = self.SLOTS // len(self.nodes)
        return min(slot // share, len(self.nodes) - 1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(signal.SIGKILL)

"""Test helpers for the security tests: a throwaway PKI made with openssl, and a redis-server
started with arbitrary arguments (TLS only, an ACL file) and probed the way its config allows.

``tests/redisproc.py`` covers the plain server every other test uses; this one exists because a
TLS-only server (``--port 0``) or one whose default user is off cannot be probed that way.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.redisproc import free_port


@dataclass(frozen=True, slots=True)
class Pki:
    """A self-signed CA and a server certificate it signed (SAN IP:127.0.0.1, DNS:localhost)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl not found")
    done = subprocess.run([binary, *map(str, args)], cwd=cwd, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace')}")


def make_ca(folder: Path, name: str = "botrix-test-ca") -> tuple[Path, Path]:
    """A self-signed CA certificate and its key, valid for a day."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "1", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=folder,
    )  # fmt: skip
    return cert, key


def issue_cert(pki: Pki, folder: Path, name: str, *, client: bool = False) -> tuple[Path, Path]:
    """A certificate and key signed by ``pki``'s CA: a server's for 127.0.0.1, or a client's."""
    return _issue(pki.ca_cert, pki.ca_key, folder, name, client=client)


def _issue(ca_cert: Path, ca_key: Path, folder: Path, name: str, *, client: bool) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    ext = folder / f"{name}.ext"
    usage = "clientAuth" if client else "serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
        f"extendedKeyUsage={usage}\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "1", "-extfile", ext,
        cwd=folder,
    )  # fmt: skip
    return cert, key


def make_pki(folder: Path) -> Pki:
    """A CA and a server certificate for 127.0.0.1 signed by it, all files under ``folder``."""
    ca_cert, ca_key = make_ca(folder)
    cert, key = _issue(ca_cert, ca_key, folder, "server", client=False)
    return Pki(ca_cert, ca_key, cert, key)


class ConfiguredRedis:
    """A redis-server started with the given arguments on a free port of its own.

    ``probe`` opens a synchronous client for a given port; start() returns once it answers PING.
    """

    def __init__(
        self,
        workdir: Path,
        args: Sequence[str],
        probe: Callable[[int], redis.Redis],
        *,
        port: int | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: run `make test` (it installs it)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.probe = probe
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until ``probe`` gets a PONG."""
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--maxmemory-policy", "noeviction",
            *self.args,
        ]  # fmt: skip
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with self.probe(self.port) as client:
                    client.ping()
                return
            except redis.RedisError as exc:
                last = exc
                if self.proc.poll() is not None:
                    output = (self.dir / "redis.log").read_text()
                    raise RuntimeError(f"redis-server exited: {output}") from exc
                time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"redis-server did not start: {last}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server and wait for it to exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=20)
        self.proc = None

    def client(self) -> redis.Redis:
        """A synchronous client made by ``probe``."""
        return self.probe(self.port)

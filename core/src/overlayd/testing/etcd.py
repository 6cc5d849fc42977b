"""A real etcd for tests: started in a temporary directory, on ports of its own.

:class:`EtcdServer` runs Debian's ``etcd`` (package ``etcd-server``) as a
single-member cluster, on loopback or inside a network namespace the test
created (``netns=``), optionally with TLS (:func:`make_tls`). It can be
stopped and started again from the same data directory, which is how tests
simulate an etcd outage. The ``etcd_server`` fixture of the overlayd pytest
plugin wraps it; it never touches an etcd it did not start.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# POSIX only (mypy --platform win32 skips the rest).
assert sys.platform != "win32", "the etcd test server runs on Linux only"

__all__ = ["EtcdServer", "TlsFiles", "etcd_binary", "free_port", "make_tls"]


def etcd_binary() -> str | None:
    """Path of the ``etcd`` program, ``None`` when it is not installed."""
    return shutil.which("etcd") or (
        "/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    return _free_ports(host, 1)[0]


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` different TCP ports free on ``host`` right now (all held while picked)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as held:
        socks = [
            held.enter_context(socket.socket(family, socket.SOCK_STREAM)) for _ in range(count)
        ]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


class _PortTaken(RuntimeError):
    """etcd could not bind a port picked for it: another process took it meanwhile."""


@dataclass(frozen=True)
class TlsFiles:
    """A CA, a server certificate for ``host`` and a client certificate, as files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls(directory: Path, host: str = "127.0.0.1") -> TlsFiles:
    """Write a throwaway CA, a server certificate for ``host`` and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("overlayd test CA"))
        .issuer_name(name("overlayd test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(cn: str, usage: x509.ObjectIdentifier, path: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            # etcd's HTTP gateway dials etcd's own gRPC port with the server
            # certificate: with --client-cert-auth it must be a client one too.
            .add_extension(
                x509.ExtendedKeyUsage(
                    [usage, ExtendedKeyUsageOID.CLIENT_AUTH]
                    if usage == ExtendedKeyUsageOID.SERVER_AUTH
                    else [usage]
                ),
                critical=False,
            )
        )
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_path = directory / f"{path}.crt"
        key_path = directory / f"{path}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key_path, key)
        return cert_path, key_path

    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = issue(host, ExtendedKeyUsageOID.SERVER_AUTH, "server")
    client_cert, client_key = issue("overlayd", ExtendedKeyUsageOID.CLIENT_AUTH, "client")
    return TlsFiles(ca_path, server_cert, server_key, client_cert, client_key)


class EtcdServer:
    """One etcd member in ``workdir``; :meth:`start`, :meth:`stop`, :meth:`kill`.

    :param workdir: Directory for the data directory and the log (created).
    :param host: Address to listen on (inside ``netns`` when given).
    :param netns: Name of a network namespace (``ip netns``) to run etcd in.
    :param tls: Serve clients over TLS, requiring client certificates.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        netns: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        binary = etcd_binary()
        if binary is None:
            raise FileNotFoundError("etcd is not installed (Debian package etcd-server)")
        self.binary = binary
        self.workdir = workdir
        self.host = host
        self.netns = netns
        self.tls = tls
        self.data_dir = workdir / "data"
        self.log_path = workdir / "etcd.log"
        if netns is None:
            self.client_port, self.peer_port = _free_ports(host, 2)
        else:  # a namespace of the test's own: every port is free there
            self.client_port, self.peer_port = 2379, 2380
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.client_port}"

    def _argv(self) -> list[str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        peer = f"http://{host}:{self.peer_port}"
        argv = [
            self.binary,
            "--name",
            "test",
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"test={peer}",
            "--log-level",
            "warn",
            "--logger",
            "zap",
        ]
        if self.tls is not None:
            argv += [
                "--cert-file",
                str(self.tls.server_cert),
                "--key-file",
                str(self.tls.server_key),
                "--trusted-ca-file",
                str(self.tls.ca),
                "--client-cert-auth",
            ]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def start(self, timeout: float = 20.0) -> None:
        """Start etcd (again, from the same data directory) and wait until it answers.

        The ports were free when they were picked, but another process may
        take one before etcd binds it (the machine runs other tests): a first
        start that fails so is retried on new ports, at most three times. A
        restart keeps its ports, which the member's data directory records.
        """
        for attempt in range(3):
            try:
                self._start(timeout)
            except _PortTaken:
                if self._started_once or self.netns is not None or attempt == 2:
                    raise
                self.client_port, self.peer_port = _free_ports(self.host, 2)
                shutil.rmtree(self.data_dir, ignore_errors=True)
                continue
            self._started_once = True
            return

    def _start(self, timeout: float) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        log = self.log_path.open("ab")
        logged = log.tell()  # this start's own lines begin here
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - the etcd binary with our own flags
                self._argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None:
                tail = self.log_tail()
                if "address already in use" in self._log_since(logged):
                    raise _PortTaken(f"etcd exited at start:\n{tail}")
                raise RuntimeError(f"etcd exited at start:\n{tail}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"etcd did not become healthy in {timeout} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def healthy(self) -> bool:
        """Whether etcd answers ``/health`` with ``true``."""
        code = (
            "import json, ssl, sys, urllib.request\n"
            "ctx = None\n"
            "if len(sys.argv) > 2:\n"
            "    ctx = ssl.create_default_context(cafile=sys.argv[2])\n"
            "    ctx.load_cert_chain(sys.argv[3], sys.argv[4])\n"
            "url = sys.argv[1] + '/health'\n"
            "body = urllib.request.urlopen(url, timeout=2, context=ctx).read()\n"
            "sys.exit(0 if json.loads(body).get('health') == 'true' else 1)\n"
        )
        argv = [sys.executable, "-c", code, self.url]
        if self.tls is not None:
            argv += [str(self.tls.ca), str(self.tls.client_cert), str(self.tls.client_key)]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        try:
            return (
                subprocess.run(  # noqa: S603 - our interpreter, a fixed script
                    argv, capture_output=True, timeout=5, check=False
                ).returncode
                == 0
            )
        except subprocess.TimeoutExpired:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop etcd gracefully (SIGTERM), keeping its data directory."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def kill(self) -> None:
        """Kill etcd at once (SIGKILL), keeping its data directory."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

"""The etcd test server picks new ports when another process took one meanwhile."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

if sys.platform == "win32":
    pytest.skip("the etcd test server runs on Linux only", allow_module_level=True)

from overlayd.testing.etcd import EtcdServer
from overlayd.testing.etcd import etcd_binary

pytestmark = pytest.mark.skipif(
    etcd_binary() is None, reason="etcd is not installed (Debian package etcd-server)"
)


def test_a_port_taken_before_etcd_binds_it_is_replaced(tmp_path: Path) -> None:
    server = EtcdServer(tmp_path / "etcd")
    taken = server.client_port
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", taken))
    squatter.listen()
    try:
        server.start()
        try:
            assert server.client_port != taken
            assert server.client_port != server.peer_port
            assert server.healthy()
            # A restart keeps the ports its data directory records.
            ports = (server.client_port, server.peer_port)
            server.stop()
            server.start()
            assert (server.client_port, server.peer_port) == ports
            assert server.healthy()
        finally:
            server.kill()
    finally:
        squatter.close()

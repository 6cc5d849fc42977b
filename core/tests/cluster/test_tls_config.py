"""TLS to etcd, and the [cluster] table's checks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from overlayd.cluster.errors import StoreUnavailable
from overlayd.cluster.store import EtcdStore
from overlayd.config import load_config
from overlayd.errors import ConfigError
from overlayd.testing.etcd import EtcdServer
from overlayd.testing.etcd import etcd_binary
from overlayd.testing.etcd import make_tls

from .conftest import settings
from .conftest import wait_for


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Any:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    tls = make_tls(tmp_path / "pki")
    server = EtcdServer(tmp_path / "etcd", tls=tls)
    server.start()
    yield server
    server.kill()
    shutil.rmtree(tmp_path / "etcd", ignore_errors=True)


async def test_nodes_join_over_tls_with_client_certificates(tls_etcd: Any, make_node: Any) -> None:
    tls = tls_etcd.tls
    files = {"ca_file": tls.ca, "cert_file": tls.client_cert, "key_file": tls.client_key}
    a = await make_node(tls_etcd.url, "ta", **files)
    b = await make_node(tls_etcd.url, "tb", **files)
    await wait_for(lambda: len(a.peers()) == 1 and len(b.peers()) == 1, 10, "a TLS mesh")


def test_without_a_client_certificate_etcd_refuses(tls_etcd: Any) -> None:
    store = EtcdStore(settings(tls_etcd.url, "anon", ca_file=tls_etcd.tls.ca))
    try:
        with pytest.raises(StoreUnavailable, match="etcd is unreachable"):
            store.grant(5)
    finally:
        store.close()


def test_an_unknown_ca_is_refused(tls_etcd: Any, tmp_path: Path) -> None:
    other = make_tls(tmp_path / "other")
    tls = tls_etcd.tls
    store = EtcdStore(
        settings(
            tls_etcd.url, "x", ca_file=other.ca, cert_file=tls.client_cert, key_file=tls.client_key
        )
    )
    try:
        with pytest.raises(StoreUnavailable):
            store.grant(5)
    finally:
        store.close()


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "overlayd.toml"
    # Drivers are named so the table under test loads wherever the real
    # platform drivers are not installed (the tox `core` env has none).
    path.write_text('drivers = ["fake"]\n' + text)
    return load_config(path)


def test_cluster_table_loads_with_defaults(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        '[cluster]\nendpoints = ["http://127.0.0.1:2379"]\ncluster_cidr = "10.200.0.0/16"\n'
        'name = "n1"\n',
    )
    c = config.cluster
    assert c is not None
    assert (c.backend, c.prefix, c.slice_prefix, c.wg_port, c.ttl) == (
        "etcd",
        "/overlayd",
        24,
        51820,
        15,
    )
    assert [str(n) for n in c.cluster_cidr] == ["10.200.0.0/16"]
    assert _load(tmp_path, "").cluster is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('endpoints = ["127.0.0.1:2379"]\ncluster_cidr = "10.0.0.0/16"', "not an http"),
        ('endpoints = []\ncluster_cidr = "10.0.0.0/16"', "endpoints"),
        ('endpoints = ["http://e:1"]\ncluster_cidr = "10.0.0.1/16"', "cluster_cidr"),
        (
            'endpoints = ["http://e:1"]\ncluster_cidr = ["fd00::/48", "10.0.0.0/16"]',
            "first is IPv4",
        ),
        ('endpoints = ["http://e:1"]\ncluster_cidr = "10.0.0.0/24"', "must be longer"),
        (
            'endpoints = ["http://e:1"]\ncluster_cidr = "10.0.0.0/16"\nname = "Bad_Name"',
            "DNS label",
        ),
        ('endpoints = ["http://e:1"]\ncluster_cidr = "10.0.0.0/16"\nprefix = "x/"', "prefix"),
        ('endpoints = ["http://e:1"]\ncluster_cidr = "10.0.0.0/16"\nadvertise = "h"', "advertise"),
        ('endpoints = ["http://e:1"]\ncluster_cidr = "10.0.0.0/16"\nca_file = "/c"', "https"),
        ('endpoints = ["https://e:1"]\ncluster_cidr = "10.0.0.0/16"\ncert_file = "/c"', "together"),
        ('endpoints = ["http://e:1"]\ncluster_cidr = "10.0.0.0/16"\nbackend = "consul"', "backend"),
        ('endpoints = ["http://e:1"]\ncluster_cidr = "10.0.0.0/16"\nttl = 1', "ttl"),
        ('endpoints = ["http://e:1"]\ncluster_cidr = "10.0.0.0/16"\nnope = 1', "unknown key"),
    ],
)
def test_bad_cluster_tables_are_refused(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, "[cluster]\n" + body + "\n")

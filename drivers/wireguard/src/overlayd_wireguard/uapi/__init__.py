"""overlayd's own client for the WireGuard cross-platform userspace API (UAPI).

* :mod:`~overlayd_wireguard.uapi.protocol`: the wire format (values checked
  before sending, ``set`` encoding, ``get`` parsing, errors);
* :mod:`~overlayd_wireguard.uapi.client`: :class:`UapiClient`, one connection
  per transaction;
* :mod:`~overlayd_wireguard.uapi.peers`: :class:`PeerConfig` and
  :func:`diff_peers`, the minimal peer operations from one state to another.

Everything public is importable from ``overlayd_wireguard.uapi`` as before.
"""

from __future__ import annotations

from overlayd_wireguard.uapi.client import UapiClient
from overlayd_wireguard.uapi.peers import PeerConfig
from overlayd_wireguard.uapi.peers import diff_peers
from overlayd_wireguard.uapi.protocol import DEFAULT_SOCKET_DIR
from overlayd_wireguard.uapi.protocol import DeviceState
from overlayd_wireguard.uapi.protocol import PeerOp
from overlayd_wireguard.uapi.protocol import PeerState
from overlayd_wireguard.uapi.protocol import SetRequest
from overlayd_wireguard.uapi.protocol import UapiDeviceError
from overlayd_wireguard.uapi.protocol import UapiPeerError
from overlayd_wireguard.uapi.protocol import UapiProtocolError
from overlayd_wireguard.uapi.protocol import UapiUnavailableError
from overlayd_wireguard.uapi.protocol import encode_set
from overlayd_wireguard.uapi.protocol import normalize_allowed_ip
from overlayd_wireguard.uapi.protocol import normalize_endpoint
from overlayd_wireguard.uapi.protocol import parse_answer
from overlayd_wireguard.uapi.protocol import parse_get
from overlayd_wireguard.uapi.protocol import redact
from overlayd_wireguard.uapi.protocol import split_prefix
from overlayd_wireguard.uapi.protocol import validate_ifname

__all__ = [
    "DEFAULT_SOCKET_DIR",
    "DeviceState",
    "PeerConfig",
    "PeerOp",
    "PeerState",
    "SetRequest",
    "UapiClient",
    "UapiDeviceError",
    "UapiPeerError",
    "UapiProtocolError",
    "UapiUnavailableError",
    "diff_peers",
    "encode_set",
    "normalize_allowed_ip",
    "normalize_endpoint",
    "parse_answer",
    "parse_get",
    "redact",
    "split_prefix",
    "validate_ifname",
]

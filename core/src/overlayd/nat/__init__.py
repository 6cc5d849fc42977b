"""NAT traversal: candidates, STUN from the WireGuard port, TURN relay, path selection.

The modules, from the bottom up:

* :mod:`overlayd.nat.config` -- the ``[nat]`` table;
* :mod:`overlayd.nat.candidates` -- candidate priorities and the
  :class:`~overlayd.nat.candidates.CandidateExchange` interface through which
  candidates reach other nodes (the IPC; in cluster mode the etcd node
  records, :mod:`overlayd.cluster.exchange`);
* :mod:`overlayd.nat.rawport` -- sending and catching STUN messages on the
  WireGuard listen port itself (raw sockets with a kernel filter);
* :mod:`overlayd.nat.stun` -- server-reflexive candidates and the NAT's
  mapping behaviour, from that port;
* :mod:`overlayd.nat.checks` -- connectivity checks between two nodes' WireGuard ports;
* :mod:`overlayd.nat.forwarding` -- the relay's data plane, a forwarding
  thread (native, :mod:`overlayd.nat.native`, or Python);
* :mod:`overlayd.nat.turn` -- a TURN allocation, local UDP relay endpoints,
  keepalives and the relay modes (both relay, single owner);
* :mod:`overlayd.nat.peerpath` -- what the agent knows about one peer;
* :mod:`overlayd.nat.peerpoll` -- one read of the device's peers shared by
  every path waiting on a handshake;
* :mod:`overlayd.nat.agent` -- per-peer path selection, the refresh loop and
  ``nat_endpoint_changed`` events.

``docs/nat.rst`` describes the design and its limits. Nothing here imports a
driver: the engine hands the agent a :class:`~overlayd.nat.agent.NatHost`.
"""

"""CNI errors: the specification's well-known codes and the plugin's own.

A :class:`CniError` becomes the error object the specification defines
(``cniVersion``, ``code``, ``msg``, ``details``), printed on standard output
with a non-zero exit status.
"""

from __future__ import annotations

#: Incompatible CNI version.
INCOMPATIBLE_VERSION = 1
#: Unsupported field in the network configuration (message names key and value).
UNSUPPORTED_FIELD = 2
#: Container unknown or does not exist (the runtime need not call ``DEL``).
UNKNOWN_CONTAINER = 3
#: Invalid necessary environment variables (message names them).
INVALID_ENVIRONMENT = 4
#: I/O failure (reading the configuration from standard input).
IO_FAILURE = 5
#: Failed to decode content (the configuration is not JSON).
DECODING_FAILURE = 6
#: Invalid network configuration.
INVALID_CONFIG = 7
#: Try again later (the daemon is not reachable, or did not answer in time).
TRY_AGAIN_LATER = 11
#: The plugin cannot service ``ADD`` requests (``STATUS``).
NOT_AVAILABLE = 50
#: overlayd refused the request; ``details`` is the daemon's message.
DAEMON_REFUSED = 100
#: ``CHECK``: the attachment is not as the previous result says.
CHECK_FAILED = 101
#: An unexpected failure inside the plugin (a bug); ``details`` says what.
INTERNAL = 999


class CniError(Exception):
    """An error reported to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, object]:
        """The specification's error object."""
        out: dict[str, object] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

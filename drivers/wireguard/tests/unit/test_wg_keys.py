from __future__ import annotations

import base64
import pickle
import shutil
import subprocess

import pytest

from overlayd.errors import InvalidRequest
from overlayd_wireguard.keys import PresharedKey
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.keys import b64_to_hex
from overlayd_wireguard.keys import generate_keypair
from overlayd_wireguard.keys import hex_to_b64
from overlayd_wireguard.keys import public_from_private
from overlayd_wireguard.keys import validate_hex_key
from overlayd_wireguard.keys import validate_key


def test_generated_keypair_is_base64_44_chars_and_consistent() -> None:
    private, public = generate_keypair()
    text = private.to_base64()
    assert len(text) == 44
    assert text.endswith("=")
    assert len(public) == 44
    assert len(base64.b64decode(public)) == 32
    assert public_from_private(private) == public
    assert public_from_private(text) == public


def test_private_key_is_clamped() -> None:
    key = PrivateKey(b"\xff" * 32)
    assert key.raw[0] & 7 == 0
    assert key.raw[31] & 0x80 == 0
    assert key.raw[31] & 0x40 == 0x40


def test_clamping_does_not_change_public_key() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.hazmat.primitives.serialization import PublicFormat

    raw = b"\x07" + b"\xaa" * 30 + b"\xff"
    expected = X25519PrivateKey.from_private_bytes(raw).public_key()
    pub = base64.b64encode(expected.public_bytes(Encoding.Raw, PublicFormat.Raw))
    assert PrivateKey(raw).public_key() == pub.decode()


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools not installed")
def test_public_key_matches_wg_pubkey() -> None:
    private, public = generate_keypair()
    out = subprocess.run(
        ["wg", "pubkey"],
        input=private.to_base64() + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == public


def test_secret_keys_are_redacted_in_repr_and_str() -> None:
    private = PrivateKey.generate()
    psk = PresharedKey.generate()
    for secret in (private, psk):
        for text in (repr(secret), str(secret), f"{secret}", repr([secret])):
            assert "redacted" in text
            assert secret.to_base64() not in text
            assert secret.to_hex() not in text


def test_hex_base64_roundtrip() -> None:
    _, public = generate_keypair()
    hexed = b64_to_hex(public)
    assert len(hexed) == 64
    assert hexed == hexed.lower()
    assert hex_to_b64(hexed) == public
    assert hex_to_b64(hexed.upper()) == public


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "A" * 44,  # no padding
        "A" * 43 + "=" + "=",  # 45 chars
        "!" * 43 + "=",
        base64.b64encode(b"x" * 31).decode(),
        base64.b64encode(b"x" * 33).decode(),
    ],
)
def test_validate_key_rejects_bad_input_without_echoing_it(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="public key") as info:
        validate_key(bad)
    if len(bad) > 3:
        assert bad not in str(info.value)


def test_validate_key_rejects_non_canonical_base64() -> None:
    _, public = generate_keypair()
    raw = base64.b64decode(public)
    # Last char of a 32-byte key encodes 4 bits + 2 zero padding bits; set one.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    idx = alphabet.index(public[42])
    if idx % 4 == 0:
        tampered = public[:42] + alphabet[idx + 1] + "="
        assert base64.b64decode(tampered) == raw
        with pytest.raises(InvalidRequest, match="canonical"):
            validate_key(tampered)
    assert validate_key(public) == public


def test_validate_key_rejects_non_string() -> None:
    with pytest.raises(InvalidRequest, match="type bytes"):
        validate_key(b"x" * 44)  # type: ignore[arg-type]  # wrong type on purpose


def test_validate_hex_key() -> None:
    assert validate_hex_key("AB" * 32) == "ab" * 32
    with pytest.raises(InvalidRequest, match="64 hex"):
        validate_hex_key("ab" * 31)
    with pytest.raises(InvalidRequest, match="not valid hex"):
        validate_hex_key("zz" * 32)


def test_secret_key_equality_and_pickle() -> None:
    a = PrivateKey.generate()
    b = PrivateKey.from_base64(a.to_base64())
    assert a == b
    assert hash(a) == hash(b)
    assert PrivateKey.from_hex(a.to_hex()) == a
    assert pickle.loads(pickle.dumps(a)) == a  # noqa: S301 - own data
    assert a != PresharedKey(a.raw)
    assert PresharedKey.none().is_zero()
    assert not PresharedKey.generate().is_zero()


def test_secret_key_rejects_wrong_length() -> None:
    with pytest.raises(InvalidRequest, match="32 bytes"):
        PresharedKey(b"short")

"""The protocol reference is generated from the golden frames and decodes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from overlayd import protocol as p
from overlayd.testing.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


def _generator() -> object:
    return load_script(ROOT / "scripts" / "gen_protocol_doc.py", "gen_protocol_doc")


def test_protocol_page_is_up_to_date() -> None:
    rendered = _generator().render()  # type: ignore[attr-defined]
    committed = (ROOT / "docs" / "protocol.rst").read_text()
    assert committed == rendered, "run: python scripts/gen_protocol_doc.py"


def test_every_example_frame_decodes_and_reencodes_exactly() -> None:
    text = (ROOT / "docs" / "protocol.rst").read_text()
    bodies = re.findall(r"Compact, as sent::\n\n   (.+)\n", text)
    assert len(bodies) > 40
    for body in bodies:
        frame = p.decode_frame(body.encode())
        assert p.encode_body(frame) == body.encode()
        assert json.loads(body)["frame"] in {"request", "response", "event"}


def test_every_op_has_an_example() -> None:
    text = (ROOT / "docs" / "protocol.rst").read_text()
    for op in p.ALL_OPS:
        assert f'"op":"{op}"' in text, op

"""Install the built wheels into a fresh venv and load every driver entry point there.

Editable installs hide packaging mistakes (a typo in an entry point, a missing
py.typed); this checks the artifacts users will install.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

CHECK = """
import importlib.metadata as md
eps = md.entry_points(group="overlayd.drivers")
names = sorted(ep.name for ep in eps)
assert {"fake", "linux_bridge", "wireguard", "hcn"} <= set(names), names
for ep in eps:
    cls = ep.load()
    driver = cls()
    info = driver.overlayd_describe()
    assert info.name == ep.name, (info.name, ep.name)
    print(f"entry point {ep.name}: {ep.value} -> API {info.api}")
import overlayd.cli  # console scripts import
import overlayd_linux.netlink, overlayd_linux.rtnl  # the drivers' Linux mechanism
import overlayd_demo.cli, overlayd_demo.real  # what `overlayd demo` imports
import json, os, subprocess, sys
plugin = os.path.join(os.path.dirname(sys.executable), "overlayd-cni")
out = subprocess.run([plugin], input=b'{"cniVersion":"1.0.0"}', capture_output=True,
                     env={"CNI_COMMAND": "VERSION"}, check=True).stdout
assert json.loads(out)["supportedVersions"] == ["1.0.0", "1.1.0"], out
print(f"console script overlayd-cni: VERSION {out.decode().strip()}")
import shutil, tempfile
if shutil.which("cc") or shutil.which("gcc"):
    # the C front end's source ships in the wheel and builds from there
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([plugin, "install", "--native", tmp], check=True, capture_output=True)
        out = subprocess.run([os.path.join(tmp, "overlayd-cni")], input=b"{}",
                             capture_output=True, env={"CNI_COMMAND": "VERSION"}).stdout
        assert json.loads(out)["supportedVersions"] == ["1.0.0", "1.1.0"], out
        print("overlayd-cni install --native: builds and answers VERSION")
"""


def main(dist: Path) -> int:
    wheels = sorted(dist.glob("*.whl"))
    if len(wheels) < 8:
        print(f"expected 8 wheels in {dist}, found {len(wheels)}", file=sys.stderr)
        return 1
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            if not any(n.endswith("/py.typed") for n in zf.namelist()):
                print(f"{wheel.name}: no py.typed", file=sys.stderr)
                return 1
    with tempfile.TemporaryDirectory() as tmp:
        venv.create(tmp, with_pip=True)
        py = Path(tmp) / "bin" / "python"
        subprocess.run([str(py), "-m", "pip", "install", "-q", *map(str, wheels)], check=True)
        subprocess.run([str(py), "-c", CHECK], check=True)
    print(f"{len(wheels)} wheels install and load")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

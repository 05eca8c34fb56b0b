"""placement/ is the pure core: importing any of its modules loads no CLI, rendering, HTTP
or Kubernetes package. `lint-imports` (make lint) checks the imports written in the code;
this checks what importing really loads, in a fresh interpreter, indirect imports included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHELL_PACKAGES = ("typer", "rich", "matplotlib", "fastapi", "kubernetes")

# Imports every module of placement one at a time, in a fresh interpreter, and prints as
# JSON which shell packages got loaded and by which placement module: a meta path hook sees
# each package's first import and names the innermost placement module on the stack (the
# one whose import statement, directly or through other packages, asked for it).
_PROBE = """
import importlib, json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
shell = sys.argv[2].split(",")
loaded = {name: "the interpreter's start-up" for name in shell if name in sys.modules}
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name in shell and name not in loaded:
            frame = sys._getframe(1)
            while frame is not None:
                module = frame.f_globals.get("__name__", "")
                if module == "placement" or module.startswith("placement."):
                    loaded[name] = module
                    break
                frame = frame.f_back
        return None
sys.meta_path.insert(0, Watch())
import placement
walked, failed = ["placement"], {}
def on_error(name):
    failed[name] = repr(sys.exc_info()[1])
for info in pkgutil.walk_packages(placement.__path__, "placement.", onerror=on_error):
    walked.append(info.name)
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed[info.name] = repr(exc)
    for name in shell:
        if name in sys.modules and name not in loaded:
            loaded[name] = info.name
print(json.dumps({"loaded": loaded, "walked": walked, "failed": failed,
                  "origin": placement.__file__}))
"""


def test_importing_placement_loads_no_shell_package() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT), ",".join(SHELL_PACKAGES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # the checkout under test, and all of it
    assert Path(result["origin"]).resolve() == ROOT / "placement" / "__init__.py"
    assert not result["failed"], f"placement modules that failed to import: {result['failed']}"
    assert {"placement.grid", "placement.strategies.cpsat", "placement.scenario.default"} <= set(
        result["walked"]
    )
    offenders = [f"{module} loads {package}" for package, module in result["loaded"].items()]
    assert not offenders, "placement must stay free of the shell packages: " + "; ".join(offenders)

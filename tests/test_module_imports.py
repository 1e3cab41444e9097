"""Every project module imports (the import smoke test of `make compat`, which runs it against
the GPU machine's torch/triton/Python; here it runs against the CI venv's).

tests/test_imports.py checks the import graph statically; this one executes each import, in a
fresh interpreter so that no module's import-time effects leak into other tests. A module that
fails to import under another torch or triton release (a renamed symbol, a removed submodule)
fails here, naming the module and the error.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.helpers import ROOT

_SCRIPT = textwrap.dedent(r"""
    import importlib, json, sys, traceback
    sys.path.insert(0, sys.argv[1])
    from tests.test_imports import module_files
    mods = sorted(module_files())
    failed = {}
    for mod in mods:
        try:
            importlib.import_module(mod)
        except BaseException:  # SystemExit from a script's import counts as a failure too
            failed[mod] = traceback.format_exc(limit=3)[-1500:]
    print("RESULT" + json.dumps({"count": len(mods), "failed": failed}))
""")


def test_every_project_module_imports():
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(ROOT)], capture_output=True,
                          text=True, timeout=300, cwd=str(ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    res = json.loads(lines[-1][len("RESULT"):])
    assert res["count"] > 40, f"only {res['count']} modules found: is module_files() broken?"
    assert res["failed"] == {}, "\n\n".join(f"{m}:\n{tb}" for m, tb in res["failed"].items())

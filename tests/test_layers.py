"""The layering rule: format is pure (construct, stdlib, itself and the errors); the
store works without pyfuse3 and trio, so offline tools can use it; the FUSE adapter
(`pstorefs/fs/`) sits on the store, below the command line, and alone with the command
line picks errnos."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import pstorefs
import pstorefs.errors
from helpers.cases import case_by_id

PACKAGE = Path(pstorefs.__file__).parent
ROOT = PACKAGE.parent

BLOCK = "import sys\nsys.modules['pyfuse3'] = None\nsys.modules['trio'] = None\n"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_store_works_without_pyfuse3_and_trio() -> None:
    case = case_by_id("x86_64-all-fronts")
    opts = dict(kv.split("=", 1) for kv in case.meta["mount_options"].split(","))
    sizes = {k: int(v) for k, v in opts.items() if k != "name"}
    code = BLOCK + f"""
import json
try:
    import pstorefs.fs
except ImportError:
    pass
else:
    raise SystemExit("the block does not work: pstorefs.fs imported")
import pstorefs.format, pstorefs.format.abi, pstorefs.format.zone, pstorefs.format.ftrace
from pstorefs.store import StoreConfig, open_store
store = open_store({str(case.image)!r}, StoreConfig(name={opts['name']!r}, read_only=True,
                   system_map={str(case.dir / case.meta['system_map'])!r}, **{sizes!r}))
files = {{store.entry(r).name: len(store.read(r)) for r in store.records}}
store.close()
assert sys.modules['pyfuse3'] is None and sys.modules['trio'] is None
print(json.dumps(files))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {name: len(body) for name, body in case.files.items()}


def test_offline_tool_works_without_pyfuse3_and_trio() -> None:
    """pstorectl is the store without FUSE: its CLI must not need pyfuse3 or trio."""
    case = case_by_id("kmsg-plain-3oops")
    code = BLOCK + f"""
from pstorefs.cli import ctl
raise SystemExit(ctl.ctl(["list", {str(case.image)!r}, "-o", {case.meta["mount_options"]!r}]))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    for name in case.files:
        assert name in proc.stdout


def test_format_import_pulls_in_nothing_else() -> None:
    code = BLOCK + """
import json
before = set(sys.modules)
import pstorefs.format.abi, pstorefs.format.consts, pstorefs.format.ftrace
import pstorefs.format.kallsyms, pstorefs.format.zone
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    ours = [m for m in json.loads(proc.stdout) if m.split(".")[0] == "pstorefs"]
    assert ours, "nothing was imported: the check would prove nothing"
    for name in ours:
        assert name in ("pstorefs", "pstorefs.errors") or name.startswith("pstorefs.format"), name


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every module a source file imports (absolute names, relative ones resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((name, node.lineno))
    return found


def allowed_in_format(module: str) -> bool:
    top = module.split(".")[0]
    if top == "pstorefs":
        return module == "pstorefs.errors" or module.startswith("pstorefs.format")
    return top == "construct" or top in sys.stdlib_module_names or top == "__future__"


CODEC_LIBRARIES = ("lz4", "lzo", "backports", "compression", "zstandard", "numpy")


def allowed_in_codecs(module: str) -> bool:
    """Codecs are functions over bytes: the compression libraries, and the format's
    constants (platform.c's dump header tells a right decoding)."""
    top = module.split(".")[0]
    if top == "pstorefs":
        return module in ("pstorefs.errors", "pstorefs.format.consts") or module.startswith(
            "pstorefs.codecs")
    return top in (*CODEC_LIBRARIES, "__future__") or top in sys.stdlib_module_names


def allowed_in_store(module: str) -> bool:
    top = module.split(".")[0]
    if top == "pstorefs":
        return module == "pstorefs.errors" or module.startswith(("pstorefs.format",
                                                                 "pstorefs.codecs",
                                                                 "pstorefs.store"))
    return (top in ("construct", *CODEC_LIBRARIES, "__future__")
            or top in sys.stdlib_module_names)


def allowed_in_fs(module: str) -> bool:
    top = module.split(".")[0]
    if top == "pstorefs":
        return module == "pstorefs.errors" or module.startswith(("pstorefs.store",
                                                                 "pstorefs.fs"))
    return top in ("pyfuse3", "trio", "__future__") or top in sys.stdlib_module_names


@pytest.mark.parametrize(("layer", "allowed"), [("format", allowed_in_format),
                                                ("codecs", allowed_in_codecs),
                                                ("store", allowed_in_store),
                                                ("fs", allowed_in_fs)])
def test_layer_imports(layer: str, allowed: Callable[[str], bool]) -> None:
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    bad = [f"{path.relative_to(ROOT)}:{line}: {module}"
           for path in files for module, line in imports_of(path)
           if not allowed(module)]
    assert not bad, "imports across the layering rule:\n" + "\n".join(bad)


def test_import_checker_catches_a_violation() -> None:
    assert not allowed_in_format("pyfuse3")
    assert not allowed_in_format("pstorefs.store")
    assert not allowed_in_store("trio")
    assert not allowed_in_store("pstorefs.fs")
    assert not allowed_in_fs("pstorefs.cli.mount")
    assert not allowed_in_codecs("pstorefs.store") and not allowed_in_codecs("construct")
    assert allowed_in_format("pstorefs.format.abi") and allowed_in_store("zlib")


def test_errors_carry_no_errno() -> None:
    """The store's errors say what failed; the errno that reports it is the front end's
    choice (`pstorefs.fs.errors.errno_of`)."""
    classes = [value for value in vars(pstorefs.errors).values()
               if isinstance(value, type) and issubclass(value, pstorefs.errors.PstoreError)]
    assert len(classes) > 5
    assert not [cls.__name__ for cls in classes if hasattr(cls, "errno")]
    assert not hasattr(pstorefs.errors.DeviceError("x", 5, writing=True), "errno")


def python_scripts() -> list[Path]:
    """The repository's Python files without a .py suffix (bench/run, tests/fuzz/run...),
    which ruff finds only when named."""
    return sorted(path for top in ("bench", "contrib", "tests") for path in (ROOT / top).rglob("*")
                  if path.is_file() and not path.suffix and path.read_bytes()[:40]
                  .startswith(b"#!/usr/bin/env python3"))


def test_the_code_is_ruff_clean() -> None:
    """The style the README promises, checked where the tests run: every Python file,
    the scripts without a suffix included."""
    scripts = python_scripts()
    assert ROOT / "bench" / "run" in scripts
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", ".",
                           *map(str, scripts)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr

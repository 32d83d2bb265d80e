"""The ramoops cases (tests/data/fixtures-backends/ramoops-*) and what the ramoops
tests read of them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from helpers.cases import DATA, Case
from pstorefs.store.ramoops.layout import RamoopsGeometry

BACKEND_FIXTURES = DATA / "fixtures-backends"
CASES = [Case(d, json.loads((d / "case.json").read_text()))
         for d in sorted(BACKEND_FIXTURES.glob("ramoops-*"))]


ECC16 = next(c for c in CASES if c.id == "ramoops-ecc16")


def case_id(case: Case) -> str:
    return case.id


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy(tmp_path: Path, case: Case, name: str = "image.bin") -> Path:
    return case.copy(name, tmp_path / f"{case.id}-{name}")


def layout_of(case: Case) -> RamoopsGeometry:
    o = dict(kv.split("=", 1) for kv in case.meta["mount_options"].split(","))
    return RamoopsGeometry(case.meta["image_bytes"], int(o["record_size"]),
                         int(o["console_size"]), int(o["ftrace_size"]), int(o["pmsg_size"]),
                         int(o["ecc"]))

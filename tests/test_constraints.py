"""constraints.txt pins every dependency `make test` and `make demo` install, within pyproject's ranges."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("models", "serve", "mlflow", "dev")  # what the Makefile installs


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        assert match, f"constraints.txt line {number} is not name==version: {line!r}"
        pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    return pins


def test_every_dependency_is_pinned_within_its_range() -> None:
    # The installed package's requirements are pyproject's, each extra's marked `extra == "..."`.
    requirements = [
        req
        for req in map(Requirement, metadata.requires("tunesmith") or [])
        if req.marker is None or any(req.marker.evaluate({"extra": extra}) for extra in EXTRAS)
    ]
    assert len(requirements) > 20
    pins = _pins()
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt; run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"
        )


def test_the_makefile_installs_from_the_pins_and_torch_agrees() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in makefile and "$(PIN) -e '.[models,serve,mlflow,dev]'" in makefile
    torch = re.search(r"^TORCH := torch==(\S+)$", makefile, re.M)
    assert torch and _pins()["torch"] == Version(torch.group(1))
    # No machine path may ride in with a pin (a package installed from a local file).
    assert "file:" not in (ROOT / "constraints.txt").read_text()

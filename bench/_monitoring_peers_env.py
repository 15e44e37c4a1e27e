"""The drift-monitoring peers' own virtual environment, and a way to run them in it.

Evidently 0.7 fails to import with pandas 3, which tunesmith uses, so Evidently and NannyML
live in a separate venv under ``bench/_work/monitor-peers/`` built from the pins below.
``bench/monitoring_peers.py`` runs there as a child process and hands back JSON. Standard
library only, so this module imports in tunesmith's environment without pulling anything in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PEER_DIR = BENCH_DIR / "_work" / "monitor-peers"
PEER_SCRIPT = BENCH_DIR / "monitoring_peers.py"
READY_MARKER = PEER_DIR / "ready.json"

# The versions that resolved together (newest Evidently 0.7.x at the time); numpy, scipy and
# scikit-learn are pinned too because the drift tests' numbers come from them.
REQUIREMENTS = (
    "evidently==0.7.23",
    "nannyml==0.13.1",
    "pandas==2.3.3",
    "pyarrow==26.0.1",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "scikit-learn==1.9.1",
)
TASKS = ("evidently", "cbpe")

_INSTALL_TIMEOUT_S = 1800.0
_VERIFY_TIMEOUT_S = 300.0
_TAIL_CHARS = 4000

# Imports both peers and reports what is installed, so a half-built venv is caught.
_VERIFY_CODE = """
import json
from importlib import metadata
import evidently, nannyml, pandas, pyarrow
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset
names = ("evidently", "nannyml", "pandas", "pyarrow", "numpy", "scipy", "scikit-learn")
print(json.dumps({n: metadata.version(n) for n in names}))
"""

_checked_python: Path | None = None


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _tail(text: str | bytes | None) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text[-_TAIL_CHARS:]


def _peer_env() -> dict[str, str]:
    """Environment for anything run with the peer python: its own packages only, few threads."""
    env = dict(os.environ)
    # tunesmith's venv settings must not leak into the peers' interpreter.
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(key, None)
    env.update(
        OMP_NUM_THREADS="2",
        OMP_WAIT_POLICY="PASSIVE",
        # Both libraries can report usage over the network; the benchmark runs offline.
        DO_NOT_TRACK="1",
        NML_DISABLE_USAGE_LOGGING="1",
    )
    return env


def _expected_versions() -> dict[str, str]:
    return dict(req.split("==", 1) for req in REQUIREMENTS)


def _verify(python: Path) -> dict[str, str] | None:
    """Installed versions when the venv imports both peers and matches the pins, else None."""
    if not python.is_file():
        return None
    try:
        done = subprocess.run(
            [str(python), "-c", _VERIFY_CODE],
            capture_output=True,
            text=True,
            timeout=_VERIFY_TIMEOUT_S,
            env=_peer_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    if not isinstance(found, dict) or any(found.get(k) != v for k, v in _expected_versions().items()):
        return None
    return {str(k): str(v) for k, v in found.items()}


def _build(venv: Path) -> None:
    """Create the venv from scratch and install the pins; RuntimeError with pip's output on failure."""
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [
            str(_venv_python(venv)),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            *REQUIREMENTS,
        ],
    ]
    for command in steps:
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, env=_peer_env(), check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"building the monitoring peers' venv timed out after {_INSTALL_TIMEOUT_S:.0f} s "
                f"running {command[:4]}; check that PyPI is reachable and rerun.\n{_tail(exc.stderr)}"
            ) from exc
        if done.returncode != 0:
            raise RuntimeError(
                f"building the monitoring peers' venv failed (exit {done.returncode}) running "
                f"{' '.join(command[:4])} ...; delete {venv} and rerun, or fix the pins in "
                f"{Path(__file__).name}.\n{_tail(done.stderr)}"
            )


def peer_python() -> Path:
    """Path of the peers' python, building ``bench/_work/monitor-peers/`` first when needed.

    An existing venv is reused when it imports Evidently and NannyML at the pinned versions; a
    missing, broken or outdated one is rebuilt from scratch. The check runs once per process.
    """
    global _checked_python
    python = _venv_python(PEER_DIR)
    if _checked_python == python and python.is_file():
        return python
    versions = _verify(python)
    if versions is None:
        READY_MARKER.unlink(missing_ok=True)
        _build(PEER_DIR)
        versions = _verify(python)
        if versions is None:
            raise RuntimeError(
                f"the monitoring peers' venv at {PEER_DIR} was built but does not import evidently and "
                f"nannyml at {', '.join(REQUIREMENTS)}; delete it and rerun to see pip's output."
            )
        READY_MARKER.write_text(json.dumps({"requirements": list(REQUIREMENTS), "installed": versions}, indent=1))
    _checked_python = python
    return python


def run_peer(task: str, in_dir: Path, out: Path, timeout: float) -> dict[str, Any]:
    """Run ``monitoring_peers.py TASK --in IN_DIR --out OUT`` with the peers' python; return its JSON.

    ``task`` is ``"evidently"`` or ``"cbpe"``. Raises RuntimeError, with the end of the child's
    stderr, when it exits non-zero, runs past ``timeout`` seconds or writes no JSON.
    """
    if task not in TASKS:
        raise ValueError(f"unknown peer task {task!r}: use one of {', '.join(TASKS)}")
    python = peer_python()
    out = Path(out)
    # A stale file from an earlier run must never pass for this run's result.
    out.unlink(missing_ok=True)
    command = [str(python), str(PEER_SCRIPT), task, "--in", str(in_dir), "--out", str(out)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_peer_env(), check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"monitoring peer {task!r} ran past {timeout:.0f} s on {in_dir}; give it a longer timeout or "
            f"fewer windows.\n{_tail(exc.stderr)}"
        ) from exc
    if done.returncode != 0:
        raise RuntimeError(
            f"monitoring peer {task!r} failed (exit {done.returncode}) on {in_dir}:\n{_tail(done.stderr)}"
        )
    if not out.is_file():
        raise RuntimeError(f"monitoring peer {task!r} exited 0 but wrote no {out}:\n{_tail(done.stderr)}")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


if __name__ == "__main__":
    print(peer_python())

"""A throwaway PostgreSQL server for tests and benchmarks, started without root and without a service.

The server binaries come from the ``pgserver`` wheel (PostgreSQL built for manylinux and macOS,
installed by the dev extra), or from ``PATH`` / Debian's ``postgresql`` package when the wheel
is missing. Everything lives in a fresh temporary folder (data, socket, log) and the server
listens on a free loopback port with trust authentication; :meth:`PostgresServer.stop` shuts it
down and deletes the folder. PostgreSQL refuses to run as root, so under root (CI containers)
the server runs as the ``nobody`` account, with a private copy of the binaries when the
installed ones are not reachable by that account.

Used as a context manager::

    with PostgresServer() as server:
        url = server.create_database("study")   # postgresql://postgres@127.0.0.1:PORT/study

:class:`PostgresUnavailable` says why a server could not be started (no binaries, no unprivileged
account, the server died at start-up, with the end of its log), so a test can skip with that reason.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tunesmith.search.study import database_url

# Fast and disposable: nothing here must survive a crash of the machine.
_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=40")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started on this machine (the message says why)."""


def find_bindir() -> Path:
    """Folder holding ``initdb`` and ``postgres``: the pgserver wheel, else PATH, else Debian's package."""
    spec = importlib.util.find_spec("pgserver")
    candidates: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise PostgresUnavailable("no PostgreSQL server binaries: install the dev extra (pgserver) or postgresql")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: None when not root, else the ``nobody`` account."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam("nobody")
    except KeyError as exc:
        raise PostgresUnavailable("running as root and there is no 'nobody' account to run PostgreSQL as") from exc
    return entry.pw_uid, entry.pw_gid


class PostgresServer:
    """One PostgreSQL server in a temporary folder on a free loopback port (see the module docstring)."""

    def __init__(self, *, start_timeout: float = 60.0) -> None:
        self.start_timeout = start_timeout
        self.port = 0
        self.root: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._account: tuple[int, int] | None = None
        self._bindir: Path | None = None

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """initdb, then start ``postgres`` and wait until it accepts connections."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        bindir = find_bindir()
        self._account = _unprivileged()
        self.root = Path(tempfile.mkdtemp(prefix="tunesmith-pg-"))
        if self._account is not None:
            os.chown(self.root, *self._account)
        self._bindir = self._reachable(bindir)
        data = self.root / "data"
        self._run([str(self._bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                   "--encoding=UTF8", "--no-sync"])  # fmt: skip
        (self.root / "sock").mkdir()
        if self._account is not None:
            os.chown(self.root / "sock", *self._account)
        # A port found free may be taken before the server binds it: try a few.
        last = ""
        for _ in range(3):
            self.port = free_port()
            log = self.root / "server.log"
            cmd = [str(self._bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
                   "-k", str(self.root / "sock")]  # fmt: skip
            for setting in _SETTINGS:
                cmd += ["-c", setting]
            with open(log, "ab") as fh:
                self.process = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, **self._as_account())
            if self._wait_ready():
                return
            last = log.read_text(errors="replace")[-2000:]
            self._halt()
            if "could not bind" not in last and "already in use" not in last:
                break
        raise PostgresUnavailable(f"PostgreSQL did not start; end of its log:\n{last}")

    def stop(self) -> None:
        """Shut the server down (fast shutdown, then kill) and delete its folder; safe to call twice."""
        self._halt()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _halt(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        # SIGINT is PostgreSQL's "fast" shutdown: sessions are cut, no wait for clients to leave.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- use -----------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` on this server (user ``postgres``, no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its URL."""
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement (autocommit); the rows it returns, if any."""
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            database_url(self.url(database)), isolation_level="AUTOCOMMIT", poolclass=_null_pool()
        )
        try:
            with engine.connect() as conn:
                result = conn.execute(sqlalchemy.text(sql))
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    # --- details -------------------------------------------------------------------------------

    def _as_account(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        uid, gid = self._account
        return {"user": uid, "group": gid, "extra_groups": [], "cwd": str(self.root)}

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **self._as_account())
        if done.returncode != 0:
            raise PostgresUnavailable(f"{Path(cmd[0]).name} failed ({done.returncode}): {done.stderr[-2000:]}")

    def _reachable(self, bindir: Path) -> Path:
        """``bindir``, or a private copy of the installation when the server's account cannot run it."""
        if self._account is None:
            return bindir
        try:
            check = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, check=False,
                                   **self._as_account())  # fmt: skip
            if check.returncode == 0:
                return bindir
        except OSError:  # the account cannot even reach the program (a folder on the way is private)
            pass
        assert self.root is not None
        # Keep the layout around the installation: the wheel's programs find their libraries
        # by a relative path (``$ORIGIN/../../../pgserver.libs``).
        prefix, package = bindir.parent, bindir.parent.parent
        install = self.root / "install"
        copy = install / package.name / prefix.name
        shutil.copytree(prefix, copy, symlinks=True)
        for libs in package.parent.glob(f"{package.name}.libs"):
            shutil.copytree(libs, install / libs.name, symlinks=True)
        for path in [install, *install.rglob("*")]:
            os.chown(path, *self._account, follow_symlinks=False)
        return copy / bindir.name

    def _wait_ready(self) -> bool:
        import sqlalchemy

        deadline = time.monotonic() + self.start_timeout
        engine = sqlalchemy.create_engine(
            database_url(self.url()), poolclass=_null_pool(), connect_args={"connect_timeout": 2}
        )
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    return False
                with contextlib.suppress(sqlalchemy.exc.OperationalError):
                    with engine.connect() as conn:
                        conn.execute(sqlalchemy.text("SELECT 1"))
                    return True
                time.sleep(0.1)
        finally:
            engine.dispose()
        return False


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


if __name__ == "__main__":
    # A manual check: start, create a database, print its URL, stop.
    with PostgresServer() as srv:
        print(srv.create_database("check"), srv.execute("SELECT version()")[0][0], file=sys.stdout)

"""The ``tunesmith`` command line: parse arguments, call the library, print.

A user error prints one line (``error: ...``) and exits with status 2; no stack trace.
One module per command group: :mod:`~tunesmith.cli.fit` (fit, evaluate, predict),
:mod:`~tunesmith.cli.export` (export, serve), :mod:`~tunesmith.cli.tune`,
:mod:`~tunesmith.cli.data` (inspect, clean), :mod:`~tunesmith.cli.demo` (backbones, demo),
:mod:`~tunesmith.cli.personalize`, :mod:`~tunesmith.cli.recommend`,
:mod:`~tunesmith.cli.monitor`, :mod:`~tunesmith.cli.registry` and
:mod:`~tunesmith.cli.refit` (refit, loop); what they share is in
:mod:`~tunesmith.cli.common`. Commands import the library inside their bodies so that
``--help`` and a command that needs no model never load torch.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

# The command modules register their commands on the app when imported: in help order.
# isort: off
from tunesmith.cli import fit as _fit
from tunesmith.cli import export as _export
from tunesmith.cli import tune as _tune
from tunesmith.cli import data as _data
from tunesmith.cli import label as _label
from tunesmith.cli import demo as _demo
from tunesmith.cli import personalize as _personalize
from tunesmith.cli import recommend as _recommend
from tunesmith.cli import monitor as _monitor
from tunesmith.cli import registry as _registry
from tunesmith.cli import refit as _refit

# isort: on
from tunesmith.cli.common import app, console, err_console, metrics_table
from tunesmith.cli.fit import print_fit_summary
from tunesmith.errors import TunesmithError

__all__ = ["app", "console", "err_console", "main", "metrics_table", "print_fit_summary"]

_COMMAND_MODULES = (_fit, _export, _tune, _data, _label, _demo, _personalize, _recommend, _monitor, _registry, _refit)


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line and exit status 2."""
    # Warnings about the user's data read as one line, like errors, not as source locations.
    warnings.formatwarning = _one_line_warning
    try:
        code = app(args=argv, standalone_mode=False)
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        if isinstance(code, int) and code:
            sys.exit(code)
    except TunesmithError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # Files that cannot be written or read (permissions, full disk) are the user's to fix.
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        # typer may raise its own vendored copy of click's exceptions, so they are recognised by
        # what they do (show themselves, carry an exit code), not by click's classes.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()

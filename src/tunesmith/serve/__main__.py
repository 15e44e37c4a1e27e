"""``python -m tunesmith.serve MODEL [--port 8000 ...]``: the server without the ``tunesmith`` CLI.

Every :class:`~tunesmith.serve.settings.ServeSettings` field is a flag (``--max-batch-size``,
``--no-access-log``, ...) except the secrets, which come from ``TUNESMITH_API_KEY`` and
``TUNESMITH_ADMIN_TOKEN`` so that they never show in ``ps``.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.serve.settings import ServeSettings

_SECRETS = ("api_key", "admin_token")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tunesmith.serve", description="Serve a tunesmith model over HTTP.")
    parser.add_argument("model", type=Path, help="Model folder written by tunesmith fit.")
    for name, field in ServeSettings.model_fields.items():
        if name in _SECRETS:
            continue
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=False)
        text = f"{field.description} (default: {default})"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            choices = typing.get_args(field.annotation)
            literal = choices and all(isinstance(c, str) for c in choices)
            parser.add_argument(flag, dest=name, default=None, choices=choices if literal else None, help=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, serve, and return the exit status (2 for a user error, with one line)."""
    args = vars(_parser().parse_args(argv))
    model = args.pop("model")
    try:
        from tunesmith.serve.command import run_server

        run_server(model, ServeSettings.from_options(**args))
    except TunesmithError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Promote a registry version into a running server, or roll back, with no failed request.

The server's hot reload (``POST /admin/reload``) loads the new model beside the serving one
and switches over between two batches: requests in flight finish on the old model, later ones
run on the new one, and none fails. Under the registry's lock the server switches first and
the champion alias changes only once the server answers that it serves the new model's
weights; when it cannot load the new model, nothing changes and the old model keeps serving.
The server reads the version's folder at the same absolute path, or under ``server_root``
where it mounts the registry elsewhere (a container's volume). A registry is a folder or an MLflow
registered model (``mlflow:<tracking URI>#<name>``, see :mod:`tunesmith.runs.mlflow_registry`);
an MLflow version is served from its checked download in the local cache folder, which is then
what ``server_root`` stands for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.runs.mlflow_registry import open_registry
from tunesmith.runs.versions import Registry, Version

ADMIN_TOKEN_ENV = "TUNESMITH_ADMIN_TOKEN"


def reload_server(server: str, path: str, *, token: str | None = None, timeout: float = 300.0) -> dict[str, Any]:
    """Ask the server at ``server`` (``http://host:port``) to serve the model folder ``path``.

    The admin token comes from ``token`` or the ``TUNESMITH_ADMIN_TOKEN`` environment variable.

    Raises:
        ConfigError: the server cannot be reached or refuses the token.
        ArtifactError: the server cannot load the model (the old one keeps serving).
    """
    import httpx

    token = token or os.environ.get(ADMIN_TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = server.rstrip("/")
    url = base + "/admin/reload"
    try:
        response = httpx.post(url, json={"path": path}, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        # The server may still finish loading and switch: ask what it serves before saying.
        serving = _serving_version(base)
        raise ArtifactError(
            f"the server did not answer within {timeout:g}s; it serves {serving or 'an unknown version'} now",
            path=path,
            hint="Check GET /v1/metadata, then run promote again (it is safe to repeat)",
        ) from None
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach {url}: {exc}", key="server") from None
    if response.status_code in (401, 403, 404):
        raise ConfigError(
            f"{url} answered {response.status_code}: hot reload needs the server's admin token",
            key="server",
            hint=f"Start the server with {ADMIN_TOKEN_ENV} set and set the same here",
        )
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:300]}
    if response.status_code != 200 or not body.get("reloaded"):
        raise ArtifactError(
            f"the server did not switch (HTTP {response.status_code}): {body.get('detail', body)}",
            path=path,
            hint="The old model keeps serving",
        )
    return dict(body)


def _serving_version(base: str) -> str | None:
    import httpx

    try:
        return str(httpx.get(base + "/v1/metadata", timeout=10).json().get("model_version"))
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


def _switcher(
    registry: Registry, server: str | None, token: str | None, server_root: str | None, answers: list[Any]
) -> Any:
    if server is None:
        return None

    def switch(version: Version) -> None:
        if server_root is not None:
            path = str(Path(server_root) / version.path.relative_to(registry.path))
        else:
            path = str(version.path.resolve())
        answer = reload_server(server, path, token=token)
        if answer.get("model_version") != version.model_version:
            raise ArtifactError(
                f"the server serves {answer.get('model_version')} after the reload, not version "
                f"{version.number} ({version.model_version})",
                path=path,
                hint="Check that the server reads the same registry (see server_root)",
            )
        answers.append(answer)

    return switch


def promote(
    registry: str | os.PathLike[str] | Registry,
    version: int | None = None,
    *,
    server: str | None = None,
    token: str | None = None,
    server_root: str | None = None,
) -> tuple[Version, dict[str, Any] | None]:
    """Make ``version`` (default: the newest candidate) the champion, and serve it at ``server``.

    Returns the new champion and the server's answer (None without a server). Safe to repeat:
    promoting the champion again reloads it on the server.
    """
    reg = open_registry(registry)
    if version is None:
        candidates = [v for v in reg.versions() if v.status == "candidate"]
        if not candidates:
            raise ArtifactError("has no candidate version to promote", path=reg.location, hint="Register a model first")
        version = candidates[-1].number
    answers: list[Any] = []
    champion = reg.promote(version, before_commit=_switcher(reg, server, token, server_root, answers))
    return champion, answers[0] if answers else None


def rollback(
    registry: str | os.PathLike[str] | Registry,
    *,
    server: str | None = None,
    token: str | None = None,
    server_root: str | None = None,
) -> tuple[Version, dict[str, Any] | None]:
    """Serve the previous champion again (at ``server`` too); returns it and the server's answer."""
    reg = open_registry(registry)
    answers: list[Any] = []
    champion = reg.rollback(before_commit=_switcher(reg, server, token, server_root, answers))
    return champion, answers[0] if answers else None

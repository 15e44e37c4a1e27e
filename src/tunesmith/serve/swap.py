"""Promote a registry version into a running server, or roll back, with no failed request.

The server's hot reload (``POST /admin/reload``) loads the new model beside the serving one
and switches over between two batches: requests in flight finish on the old model, later ones
run on the new one, and none fails. The registry's champion alias changes first; when the
server refuses the new model (it cannot load it), the alias and statuses are put back as they
were and the old model keeps serving.
"""

from __future__ import annotations

import os
from typing import Any

from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.runs.versions import ModelRegistry, Version

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
    url = server.rstrip("/") + "/admin/reload"
    try:
        response = httpx.post(url, json={"path": path}, headers=headers, timeout=timeout)
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


def _swap(registry: ModelRegistry, change: Any, server: str | None, token: str | None) -> tuple[Version, Any]:
    before = registry.aliases()
    statuses = {v.number: v.status for v in registry.versions()}
    new = change()
    answer = None
    if server is not None:
        try:
            answer = reload_server(server, str(new.path.resolve()), token=token)
        except BaseException:
            registry.restore_aliases(before, statuses)
            raise
    return new, answer


def promote(
    registry: str | os.PathLike[str] | ModelRegistry,
    version: int | None = None,
    *,
    server: str | None = None,
    token: str | None = None,
) -> tuple[Version, dict[str, Any] | None]:
    """Make ``version`` (default: the newest candidate) the champion, and serve it at ``server``.

    Returns the new champion and the server's answer (None without a server).
    """
    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    if version is None:
        candidates = [v for v in reg.versions() if v.status == "candidate"]
        if not candidates:
            raise ArtifactError("has no candidate version to promote", path=reg.path, hint="Register a model first")
        version = candidates[-1].number
    number = version
    return _swap(reg, lambda: reg.promote(number), server, token)


def rollback(
    registry: str | os.PathLike[str] | ModelRegistry, *, server: str | None = None, token: str | None = None
) -> tuple[Version, dict[str, Any] | None]:
    """Serve the previous champion again (at ``server`` too); returns it and the server's answer."""
    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    return _swap(reg, reg.rollback, server, token)

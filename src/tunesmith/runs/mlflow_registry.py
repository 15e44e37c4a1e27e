"""The model registry kept in MLflow: the versions, champion and rollback of a local registry.

A registry location is a folder (:class:`~tunesmith.runs.versions.ModelRegistry`) or
``mlflow:<tracking URI>#<registered model name>``::

    mlflow:sqlite:///mlflow.db#reviews          a local MLflow database
    mlflow:http://127.0.0.1:5000#reviews        an MLflow tracking server
    mlflow:#reviews                             MLflow's own default (MLFLOW_TRACKING_URI)

In MLflow the registry is one *registered model*:

- a **version** is an MLflow model version whose artifacts are the tunesmith model folder,
  byte for byte (logged as the artifacts of a run of the experiment ``tunesmith-<name>``; the
  model is never pickled). Its tags hold what a local version's record holds: the weights hash
  (``tunesmith.model_version``), the kind and source folder, notes (``tunesmith.note.<key>``,
  JSON) and ``tunesmith.status=rejected`` once rejected. A model version without those tags
  (logged by another tool, or still pending) is no tunesmith version;
- the **champion** is the registered model's alias ``champion``, so any MLflow client can load
  ``models:/<name>@champion``; the champions before it and every version that served are kept
  in the registered model's tag ``tunesmith.aliases`` (JSON), for rollback;
- the model's kind, task and labels are the tag ``tunesmith.identity``: a folder of another
  model is refused, and so is a registered model that another tool filled.

:meth:`MlflowRegistry.get` downloads a version into a cache folder on this machine
(``TUNESMITH_MLFLOW_CACHE``, else ``~/.cache/tunesmith/mlflow``), keyed by the tracking URI, the
name, the version and its weights hash, and renamed into place only once its weights hash, the
digest of all its files and its identity match what was registered, so ``Version.path`` is a
local folder that ``tunesmith.load`` opens (as untrusted input, like any folder). MLflow has no
lock: changes are serialized between processes that share the cache folder by a lock in it;
moving the champion writes an intent into the tag before the alias and the final state after
it, so a crash between the writes leaves a state that reads back as the old or the new champion.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.runs.fingerprint import file_sha256, model_version
from tunesmith.runs.versions import (
    MLFLOW_SCHEME,
    AliasedRegistry,
    ModelRegistry,
    Registry,
    Version,
    check_identity,
    locked,
    model_identity,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

CHAMPION_ALIAS = "champion"
CACHE_ENV = "TUNESMITH_MLFLOW_CACHE"
ARTIFACT_PATH = "model"
IDENTITY_TAG = "tunesmith.identity"
ALIASES_TAG = "tunesmith.aliases"
WEIGHTS_TAG = "tunesmith.model_version"
FILES_TAG = "tunesmith.files_sha256"
KIND_TAG = "tunesmith.kind"
SOURCE_TAG = "tunesmith.source"
STATUS_TAG = "tunesmith.status"
NOTE_TAG = "tunesmith.note."
_MISSING = "RESOURCE_DOES_NOT_EXIST"


def _mlflow() -> ModuleType:
    """MLflow, imported on first use: an optional extra, and a second of import time that a
    folder registry should not pay."""
    try:
        import mlflow
        import mlflow.artifacts
    except ImportError:
        raise ConfigError(
            "MLflow registry needs the mlflow extra", key="registry", hint="pip install 'tunesmith[mlflow]'"
        ) from None
    return mlflow


def parse_location(location: str) -> tuple[str | None, str]:
    """``mlflow:<tracking URI>#<name>`` -> (tracking URI or None for MLflow's default, name).

    Raises:
        ConfigError: the location does not start with ``mlflow:`` or names no model.
    """
    if not location.startswith(MLFLOW_SCHEME):
        raise ConfigError(f"{location!r} is no MLflow registry location", key="registry")
    tracking, sep, name = location[len(MLFLOW_SCHEME) :].rpartition("#")
    if not sep or not name.strip():
        raise ConfigError(
            f"{location!r} names no registered model",
            key="registry",
            hint="Write mlflow:<tracking URI>#<model name>, e.g. mlflow:sqlite:///mlflow.db#reviews",
        )
    return (tracking or None), name.strip()


def open_registry(registry: str | os.PathLike[str] | Registry) -> Registry:
    """The registry at ``registry``: a folder, or ``mlflow:<tracking URI>#<model name>``.

    A registry object is returned as it is.
    """
    if isinstance(registry, str | os.PathLike):
        text = os.fspath(registry)
        if text.startswith(MLFLOW_SCHEME):
            tracking, name = parse_location(text)
            return MlflowRegistry(name, tracking_uri=tracking)
        return ModelRegistry(text)
    return registry


def default_cache() -> Path:
    """Where downloaded versions are kept: ``TUNESMITH_MLFLOW_CACHE``, else the user's cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tunesmith" / "mlflow"


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file's relative path and content hash: any change to the folder shows."""
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        if path.is_symlink():
            raise ArtifactError("is a link; a model folder holds plain files", path=path)
        lines.append(f"{path.relative_to(folder).as_posix()}\t{file_sha256(path)}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _loads(text: str | None, default: Any = None) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return text  # a tag another tool wrote by hand: kept as it is


class MlflowRegistry(AliasedRegistry):
    """The registered model ``name`` of the MLflow tracking server or database ``tracking_uri``.

    Offers the methods of :class:`~tunesmith.runs.versions.ModelRegistry` with the same
    meaning. ``cache_dir`` holds the downloaded versions (default: :func:`default_cache`);
    ``experiment`` is the experiment whose runs carry the versions' artifacts (default
    ``tunesmith-<name>``, created on first use; with a ``sqlite:`` tracking URI its artifacts go
    to ``mlartifacts/`` beside the database file). Each registry keeps its copies in a folder of
    its own under ``cache_dir``, named by a hash of the tracking URI and name.

    Raises:
        ConfigError: MLflow is not installed, or ``name`` holds a quote.
        ArtifactError: the registered model holds versions that tunesmith did not register.
    """

    def __init__(
        self,
        name: str,
        *,
        tracking_uri: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        experiment: str | None = None,
    ) -> None:
        if not name or "'" in name or '"' in name:
            raise ConfigError(f"{name!r} is no MLflow model name", key="registry", hint="Use a name without quotes")
        self._mlflow = _mlflow()
        self._errors_type: type[Exception] = self._mlflow.exceptions.MlflowException
        self.name = name
        self.tracking_uri = tracking_uri or str(self._mlflow.get_tracking_uri())
        self.location = f"{MLFLOW_SCHEME}{self.tracking_uri}#{name}"
        with self._errors():  # an unsupported URI scheme is refused here, not at the first call
            self.client: MlflowClient = self._mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        key = hashlib.sha256(f"{self.tracking_uri}#{name}".encode()).hexdigest()[:16]
        self.path = (Path(cache_dir) if cache_dir is not None else default_cache()) / key
        self.experiment = experiment or f"tunesmith-{name}"
        self._identity_or_refuse(self._registered_model())

    # --- talking to MLflow -----------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._errors_type as exc:
            message = getattr(exc, "message", str(exc))
            raise ArtifactError(f"MLflow refused: {message}", path=self.location) from None

    def _is_missing(self, exc: Exception) -> bool:
        return getattr(exc, "error_code", None) == _MISSING

    def _registered_model(self) -> RegisteredModel | None:
        with self._errors():
            try:
                return self.client.get_registered_model(self.name)
            except self._errors_type as exc:
                if self._is_missing(exc):
                    return None
                raise

    def _model_versions(self) -> list[ModelVersion]:
        found: list[ModelVersion] = []
        token = None
        with self._errors():
            while True:
                page = self.client.search_model_versions(f"name='{self.name}'", page_token=token)
                found.extend(page)
                token = page.token
                if not token:
                    break
        return [mv for mv in found if self._is_ours(mv)]

    def _model_version(self, number: int) -> ModelVersion | None:
        with self._errors():
            try:
                mv = self.client.get_model_version(self.name, str(number))
            except self._errors_type as exc:
                if self._is_missing(exc):
                    return None
                raise
        return mv if self._is_ours(mv) else None

    @staticmethod
    def _is_ours(mv: ModelVersion) -> bool:
        # A version is complete once it exists with its tags (they are set in the same call
        # that creates it, after the upload); one pending on a server is not one yet.
        return WEIGHTS_TAG in (mv.tags or {}) and str(mv.status) == "READY"

    def _experiment_id(self) -> str:
        with self._errors():
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                return str(found.experiment_id)
            location = None
            if self.tracking_uri.startswith("sqlite:///"):
                # Else MLflow puts the artifacts under ./mlruns of whatever folder we run in.
                database = Path(self.tracking_uri[len("sqlite:///") :]).resolve()
                location = (database.parent / "mlartifacts").as_uri()
            return str(self.client.create_experiment(self.experiment, artifact_location=location))

    # --- reading ---------------------------------------------------------------------------

    def _identity_or_refuse(self, model: RegisteredModel | None) -> dict[str, Any] | None:
        if model is None:
            return None
        identity = _loads((model.tags or {}).get(IDENTITY_TAG))
        if identity is None:
            with self._errors():
                others = self.client.search_model_versions(f"name='{self.name}'", max_results=1)
            if others:
                raise ArtifactError(
                    f"is an MLflow model that tunesmith did not register (no {IDENTITY_TAG} tag)",
                    path=self.location,
                    hint="Name a new registered model, or one tunesmith made",
                )
        return identity if isinstance(identity, dict) else None

    def identity(self) -> dict[str, Any] | None:
        """The kind, task and labels every version shares, or None before the first version."""
        return self._identity_or_refuse(self._registered_model())

    def _state(self, model: RegisteredModel | None) -> dict[str, Any]:
        if model is None:
            return {"champion": None, "history": [], "served": []}
        alias = (model.aliases or {}).get(CHAMPION_ALIAS)
        champion = None if alias is None else int(alias)
        raw = _loads((model.tags or {}).get(ALIASES_TAG), {})
        raw = raw if isinstance(raw, dict) else {}
        pending = raw.get("next")
        if isinstance(pending, dict) and champion is not None and pending.get("champion") == champion:
            raw = pending  # the alias moved: the change committed, its final tag was not written
        recorded = raw.get("champion")
        history = [int(n) for n in raw.get("history") or []]
        served = {int(n) for n in raw.get("served") or []}
        if recorded != champion:
            # The alias was moved outside tunesmith (MLflow's UI, another client): the version
            # it names serves, and the one before goes into the history as after a promotion.
            if recorded is not None:
                history.append(int(recorded))
            if champion is not None:
                served.add(champion)
        state: dict[str, Any] = {"champion": champion, "history": history, "served": sorted(served)}
        return state

    def aliases(self) -> dict[str, Any]:
        """``{"champion": n or None, "history": [earlier champions, oldest first], "served": [all]}``."""
        return self._state(self._registered_model())

    def _folder(self, number: int, weights: str) -> Path:
        return self.path / f"v{number:04d}-{weights}"

    def _version(self, mv: ModelVersion, state: Mapping[str, Any]) -> Version:
        tags = dict(mv.tags or {})
        number = int(mv.version)
        if tags.get(STATUS_TAG) == "rejected":
            status = "rejected"
        elif state.get("champion") == number:
            status = "champion"
        elif number in (state.get("served") or []):
            status = "retired"
        else:
            status = "candidate"
        created = dt.datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, dt.timezone.utc)
        return Version(
            number=number,
            path=self._folder(number, tags[WEIGHTS_TAG]),
            model_version=tags[WEIGHTS_TAG],
            status=status,
            created=created.replace(microsecond=0).isoformat(),
            source=tags.get(SOURCE_TAG),
            kind=tags.get(KIND_TAG),
            notes={k[len(NOTE_TAG) :]: _loads(v) for k, v in sorted(tags.items()) if k.startswith(NOTE_TAG)},
        )

    def versions(self) -> list[Version]:
        """Every tunesmith version, oldest first. Their folders are downloaded by :meth:`get` only."""
        state = self.aliases()
        return sorted((self._version(mv, state) for mv in self._model_versions()), key=lambda v: v.number)

    def get(self, number: int) -> Version:
        """Version ``number``, its folder downloaded into the cache (once) and checked.

        Raises:
            ArtifactError: there is no such version, or its download's weights or identity
                differ from what was registered.
        """
        mv = self._model_version(number)
        if mv is None:
            known = ", ".join(str(v.number) for v in self.versions()) or "none"
            raise ArtifactError(f"has no version {number} (versions: {known})", path=self.location)
        version = self._version(mv, self.aliases())
        self._download(mv, version)
        return version

    def _download(self, mv: ModelVersion, version: Version) -> None:
        if version.path.is_dir():
            return  # renamed into place only after its checks passed
        self.path.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{version.path.name}.download-", dir=self.path))
        try:
            with self._errors():
                uri = self.client.get_model_version_download_uri(self.name, mv.version)
                got = Path(
                    self._mlflow.artifacts.download_artifacts(
                        artifact_uri=uri, dst_path=str(scratch), tracking_uri=self.tracking_uri
                    )
                )
            weights = model_version(got)
            registered = (mv.tags or {}).get(FILES_TAG)
            if weights != version.model_version or folder_digest(got) != registered:
                raise ArtifactError(
                    f"version {version.number}'s artifacts differ from what was registered (weights {weights}, "
                    f"registered {version.model_version})",
                    path=self.location,
                    hint="The artifact store was changed after registration: do not serve it; register the model again",
                )
            known = self.identity()
            if known is not None:
                check_identity(known, model_identity(got), uri, self.location)
            try:
                os.replace(got, version.path)
            except OSError:
                if not version.path.is_dir():  # else another process put the same copy in place
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # --- changing --------------------------------------------------------------------------

    def register(
        self, model: str | os.PathLike[str], *, notes: Mapping[str, Any] | None = None, status: str = "candidate"
    ) -> Version:
        """Upload the model folder ``model`` as the next MLflow model version.

        Raises:
            ArtifactError: ``model`` is no model folder, or one of another kind, task or
                label set than the registry holds (it says which); MLflow refused a call.
        """
        self._check_new_status(status)
        source = Path(model)
        identity = model_identity(source)
        with locked(self.path):
            registered = self._registered_model()
            known = self._identity_or_refuse(registered)
            if known is not None:
                check_identity(known, identity, source, self.location)
            # Upload a copy, so that the hash recorded is that of what was uploaded even when
            # the source folder changes meanwhile; the copy then becomes the cached download.
            staged = Path(tempfile.mkdtemp(prefix=".register-", dir=self.path))
            try:
                try:
                    shutil.copytree(source, staged, dirs_exist_ok=True, symlinks=False)
                except (OSError, shutil.Error) as exc:
                    raise ArtifactError(f"cannot be copied: {exc}", path=source) from None
                weights = model_version(staged)
                tags = {WEIGHTS_TAG: weights, FILES_TAG: folder_digest(staged), SOURCE_TAG: str(source.resolve())}
                number = self._upload(staged, registered, known, identity, tags, notes or {}, status)
                final = self._folder(number, weights)
                if not final.exists():
                    os.replace(staged, final)
            finally:
                shutil.rmtree(staged, ignore_errors=True)
            return self.get(number)

    def _upload(
        self,
        folder: Path,
        registered: RegisteredModel | None,
        known: Mapping[str, Any] | None,
        identity: Mapping[str, Any],
        tags: dict[str, str],
        notes: Mapping[str, Any],
        status: str,
    ) -> int:
        tags = {**tags, KIND_TAG: str(identity["kind"])}
        tags.update({NOTE_TAG + str(k): json.dumps(v, sort_keys=True) for k, v in notes.items()})
        if status == "rejected":
            tags[STATUS_TAG] = "rejected"
        with self._errors():
            if registered is None:
                self.client.create_registered_model(self.name, tags={IDENTITY_TAG: json.dumps(dict(identity))})
            elif known is None:
                self.client.set_registered_model_tag(self.name, IDENTITY_TAG, json.dumps(dict(identity)))
            run = self.client.create_run(self._experiment_id(), run_name=f"register {Path(tags[SOURCE_TAG]).name}")
            run_id = run.info.run_id
            try:
                self.client.log_artifacts(run_id, str(folder), ARTIFACT_PATH)
            except BaseException:
                self.client.set_terminated(run_id, "FAILED")
                raise
            self.client.set_terminated(run_id)
            mv = self.client.create_model_version(
                self.name, f"runs:/{run_id}/{ARTIFACT_PATH}", run_id=run_id, tags=tags
            )
        return int(mv.version)

    def _ours(self, number: int) -> ModelVersion:
        mv = self._model_version(number)
        if mv is None:
            self.get(number)  # raises, naming the versions there are
            raise AssertionError("unreachable")
        return mv

    def annotate(self, number: int, **notes: Any) -> Version:
        """Add ``notes`` to version ``number``'s tags (a gate decision, a data fingerprint)."""
        with locked(self.path):
            self._ours(number)
            with self._errors():
                for key, value in notes.items():
                    self.client.set_model_version_tag(
                        self.name, str(number), NOTE_TAG + key, json.dumps(value, sort_keys=True)
                    )
            return self.get(number)

    def reject(self, number: int, reason: str) -> Version:
        """Mark version ``number`` rejected (kept, never promoted); the reason goes into its notes."""
        with locked(self.path):
            self._ours(number)
            if self.aliases().get("champion") == number:
                raise ArtifactError(f"version {number} serves now; roll back before rejecting it", path=self.location)
            with self._errors():
                self.client.set_model_version_tag(
                    self.name, str(number), NOTE_TAG + "rejected_because", json.dumps(reason)
                )
                self.client.set_model_version_tag(self.name, str(number), STATUS_TAG, "rejected")
            return self.get(number)

    def _write_aliases(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
        # Intent, alias, final state: _state() reads each crash point as the old or the new champion.
        with self._errors():
            self.client.set_registered_model_tag(self.name, ALIASES_TAG, json.dumps({**before, "next": after}))
            self.client.set_registered_model_alias(self.name, CHAMPION_ALIAS, str(after["champion"]))
            self.client.set_registered_model_tag(self.name, ALIASES_TAG, json.dumps(dict(after)))

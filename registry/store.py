"""Where the registry lives: a tracking URI and an experiment.

Default: a local SQLite database plus an artifact folder under ``$EDITFLOW_HOME`` (default
``~/.editflow``): ``mlflow.db`` and ``artifacts/``. Any MLflow tracking URI works instead
(``MLFLOW_TRACKING_URI`` or ``--tracking-uri``: an ``mlflow server`` backed by Postgres and S3
when many writers share a store).

Resolving a store has no side effects. A local database is created (and MLflow's schema
migrated, and the experiment made) once, under a file lock beside it, by the first
:meth:`Store.client` that may write (``create=True``): several processes starting on a fresh
store at once would otherwise race inside MLflow's migrations. Readers (``create=False``) never
create a store. An ``http(s)://`` server is probed first (a TCP connection, a few seconds at
most), so an unreachable one is one clear error instead of minutes of MLflow's retries.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from editflow.errors import EditflowError

EXPERIMENT = "editflow"
PROBE_TIMEOUT_S = 3.0
LOCK_TIMEOUT_S = 300.0
_ready: set[tuple[str, str | None]] = set()  # local stores this process has created/checked
_reached: set[str] = set()  # servers this process has reached
_guard = threading.Lock()


def editflow_home() -> Path:
    return Path(os.environ.get("EDITFLOW_HOME") or Path.home() / ".editflow")


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse an ``http(s)://`` tracking URI whose server does not accept a connection within
    ``timeout`` seconds (other URIs pass)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or uri in _reached:
        return
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise EditflowError(f"bad tracking URI {uri!r}: invalid port") from None
    if not parsed.hostname:
        raise EditflowError(f"bad tracking URI {uri!r}: no host")
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise EditflowError(f"cannot reach the MLflow tracking server at {uri}: {why}") from None
    _reached.add(uri)


@dataclass(frozen=True)
class Store:
    tracking_uri: str
    artifact_root: str | None = None  # only for a local store: where the experiment's artifacts go

    @classmethod
    def resolve(cls, tracking_uri: str | None = None) -> Store:
        """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the local SQLite store (not created here)."""
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri and uri.startswith("sqlite:///"):  # a local database: artifacts beside it, not in ./mlruns
            db = Path(unquote(uri[len("sqlite:///"):]))
            return cls(uri, (db.parent / "artifacts").resolve().as_uri())
        if uri:
            return cls(uri)  # a server (or other store) decides where artifacts go
        home = editflow_home()
        return cls(f"sqlite:///{(home / 'mlflow.db').resolve()}", (home / "artifacts").resolve().as_uri())

    @property
    def database(self) -> Path | None:
        """The SQLite file of a local store (``None`` for a server or another backend)."""
        if self.tracking_uri.startswith("sqlite:///"):
            return Path(unquote(self.tracking_uri[len("sqlite:///"):]))
        return None

    def exists(self) -> bool:
        """False only for a local store whose database was never created (nothing registered yet)."""
        db = self.database
        return db is None or db.is_file()

    def client(self, create: bool = True):
        """An ``MlflowClient`` on this store. ``create=True`` (writers) creates and migrates a local
        store first, once, under a file lock; ``create=False`` (readers) refuses a missing one."""
        from mlflow import MlflowClient

        probe(self.tracking_uri)
        db = self.database
        if db is not None:
            if create:
                self._prepare(db)
            elif not db.is_file():
                raise EditflowError(f"no registry at {db} yet (nothing was registered there)")
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _prepare(self, db: Path) -> None:
        from filelock import FileLock
        from mlflow import MlflowClient

        key = (self.tracking_uri, self.artifact_root)
        if key in _ready:
            return
        with _guard:
            if key in _ready:
                return
            db.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(db) + ".lock", timeout=LOCK_TIMEOUT_S):
                client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
                client.search_experiments(max_results=1)  # opens the tracking store: creates/migrates the schema
                client.search_registered_models(max_results=1)  # and the registry's, on the same database
                self._experiment(client)
            _ready.add(key)

    def experiment_id(self, name: str = EXPERIMENT) -> str:
        return self._experiment(self.client(), name)

    def _experiment(self, client, name: str = EXPERIMENT) -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=self.artifact_root)
        except Exception:  # another writer created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

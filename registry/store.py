"""Where the registry lives: a tracking URI and an experiment.

Default: a local SQLite database plus an artifact folder under ``$EDITFLOW_HOME`` (default
``~/.editflow``): ``mlflow.db`` and ``artifacts/``. Any MLflow tracking URI works instead
(``MLFLOW_TRACKING_URI`` or ``--tracking-uri``: an ``mlflow server`` backed by Postgres and S3
when many writers share a store).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

EXPERIMENT = "editflow"


def editflow_home() -> Path:
    return Path(os.environ.get("EDITFLOW_HOME") or Path.home() / ".editflow")


@dataclass(frozen=True)
class Store:
    tracking_uri: str
    artifact_root: str | None = None  # only for a local store: where the experiment's artifacts go

    @classmethod
    def resolve(cls, tracking_uri: str | None = None) -> Store:
        """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the local SQLite store."""
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri and uri.startswith("sqlite:///"):  # a local database: artifacts beside it, not in ./mlruns
            db = Path(uri[len("sqlite:///"):])
            return cls(uri, (db.parent / "artifacts").resolve().as_uri())
        if uri:
            return cls(uri)  # a server (or other store) decides where artifacts go
        home = editflow_home()
        home.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{(home / 'mlflow.db').resolve()}", (home / "artifacts").resolve().as_uri())

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self, name: str = EXPERIMENT) -> str:
        client = self.client()
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

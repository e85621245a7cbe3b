"""A host that already uses Flask-SQLAlchemy can share its database with the extension,
and the extension never commits (or rolls back) the host's session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Integer, String, inspect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_zis_connections import ZISConnections
from flask_zis_connections.storage import SQLAlchemyStorage

from .conftest import reset_postgres
from .helpers import client_body


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "host_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'host.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    reset_postgres(url)
    return url


@pytest.fixture(params=["shared-url", "shared-engine"])
def host(
    request: pytest.FixtureRequest, tmp_path: Path, db_url: str
) -> Iterator[tuple[Flask, SQLAlchemy, ZISConnections]]:
    url = db_url
    app = Flask("sqla_host", instance_path=str(tmp_path))
    app.config.update(
        SECRET_KEY="x", SQLALCHEMY_DATABASE_URI=url, ZIS_ENCRYPTION_KEYS=[Fernet.generate_key().decode()]
    )
    db = SQLAlchemy(app, model_class=Base)
    with app.app_context():
        db.create_all()
        if request.param == "shared-engine":
            zis = ZISConnections(storage=SQLAlchemyStorage(engine=db.engine))
            zis.init_app(app)
        else:
            app.config["ZIS_DATABASE_URI"] = url
            zis = ZISConnections(app)
    yield app, db, zis
    with app.app_context():
        app.extensions["zis_connections"].storage.close()
        db.drop_all()
        db.engine.dispose()


def test_extension_writes_do_not_commit_the_host_session(
    host: tuple[Flask, SQLAlchemy, ZISConnections],
) -> None:
    app, db, zis = host
    with app.app_context():
        db.session.add(Note(id=1, text="uncommitted"))
        if db.engine.dialect.name != "sqlite":
            # SQLite has one writer per file: a host transaction that has already
            # written holds the file's write lock until it ends (see README).
            db.session.flush()
        zis.create_oauth_client("acme", **client_body())
        db.session.rollback()
        assert db.session.get(Note, 1) is None  # the host's rollback still undoes its work
        assert [c.name for c in zis.list_oauth_clients("acme")] == ["acme"]  # ours is kept
        db.session.add(Note(id=2, text="kept"))
        db.session.commit()
        assert db.session.get(Note, 2) is not None
        tables = set(inspect(db.engine).get_table_names())
        assert {"host_notes", "zis_oauth_clients", "zis_connections"} <= tables

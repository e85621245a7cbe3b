"""The wheel people install holds the library, all of it, and says what it is.

The wheel is built the way a release is (``python -m build --wheel``, in an isolated
environment) from a copy of the whole checkout, so a packages pattern that caught
``example_app`` or ``tests`` would show here, as would a migration the package data misses:
``flask zis db upgrade`` would then fail only on installed copies, never in a checkout.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "flask_zis_connections"

#: What the checkout holds that is not part of any distribution.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    "build",
    "dist",
    "instance",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".coverage*",
)

CLASSIFIERS = {
    "Development Status :: 3 - Alpha",
    "Framework :: Flask",
    "Intended Audience :: Developers",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
    "Topic :: Internet :: WWW/HTTP",
    "Typing :: Typed",
}


class Built:
    def __init__(self, source: Path, wheel: Path) -> None:
        self.source = source
        with zipfile.ZipFile(wheel) as archive:
            self.names = set(archive.namelist())
            (self.dist_info,) = {n.split("/")[0] for n in self.names if ".dist-info/" in n}
            self.metadata: Message = Parser().parsestr(
                archive.read(f"{self.dist_info}/METADATA").decode("utf-8")
            )

    def source_files(self, pattern: str) -> list[str]:
        """Paths (as in the wheel) of the source package's files matching ``pattern``."""
        return sorted(
            p.relative_to(self.source).as_posix()
            for p in (self.source / PACKAGE).glob(pattern)
            if p.is_file() and "__pycache__" not in p.parts
        )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    if importlib.util.find_spec("build") is None:
        pytest.fail("The 'build' package is missing; install the 'test' extra: pip install -e '.[test]'")
    work = tmp_path_factory.mktemp("packaging")
    source, dist = work / "source", work / "dist"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (wheel,) = dist.glob("*.whl")
    yield Built(source, wheel)


def test_the_wheel_holds_the_library_only(built: Built) -> None:
    top = {name.split("/")[0] for name in built.names}
    assert top == {PACKAGE, built.dist_info}, sorted(top)
    assert built.dist_info.startswith(f"{PACKAGE}-")


def test_every_file_of_the_package_is_in_the_wheel(built: Built) -> None:
    missing = [path for path in built.source_files("**/*") if path not in built.names]
    assert not missing, missing
    assert f"{PACKAGE}/py.typed" in built.names


def test_the_migrations_ship(built: Built) -> None:
    versions = built.source_files("**/migrations/versions/*.py")
    templates = built.source_files("**/migrations/script.py.mako")
    environments = built.source_files("**/migrations/env.py")
    assert versions and templates and environments, "no Alembic migrations found in the source tree"
    missing = [path for path in versions + templates + environments if path not in built.names]
    assert not missing, missing


def test_the_metadata_says_what_it_is(built: Built) -> None:
    meta = built.metadata
    assert meta["Name"] == "flask-zis-connections"
    assert set(meta.get_all("Classifier") or []) == CLASSIFIERS, meta.get_all("Classifier")
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert meta.get_all("License-File") == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert "BSD 3-Clause" in license_text and "flask-zis-connections contributors" in license_text
    assert f"{built.dist_info}/licenses/LICENSE" in built.names
    urls = {entry.split(",")[0] for entry in meta.get_all("Project-URL") or []}
    assert {"Documentation", "Source", "Changelog"} <= urls, urls


def test_flask_sqlalchemy_is_not_a_runtime_dependency(built: Built) -> None:
    runtime = [r for r in built.metadata.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert runtime, "no runtime dependencies at all"
    assert not [r for r in runtime if r.lower().startswith("flask-sqlalchemy")], runtime

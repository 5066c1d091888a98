"""``shoal init``: lay out a new project (shoal.yaml, the .shoal home and its database, an example).

The database is opened (and an existing shoal.yaml checked) before any file is written, so a bad
``SHOAL_DATABASE`` or a broken shoal.yaml leaves the folder as it was. Files are written under a
temporary name and renamed into place, and a user's file is never overwritten.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from importlib import resources

from .errors import CodeError, ProjectError
from .project import CONFIG_FILE, Project

EXAMPLE_FILE = "train.py"
EXAMPLE_HANDLER = "train"


def create_project(
    path: str | os.PathLike = ".", *, name: str | None = None, example: bool = True
) -> tuple[Project, list[str]]:
    """Create what is missing; return the (closed) project and the files created."""
    root = pathlib.Path(path).resolve()
    if root.exists() and not root.is_dir():
        raise ProjectError(f"{root} exists and is not a folder")
    new_root = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProjectError(f"cannot create the project folder {root}: {exc.strerror or exc}") from None
    try:
        project = _open(root, name)
        created = _write_files(root, project.name, example)
    except BaseException:
        if new_root:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return Project(root), created


def _open(root: pathlib.Path, name: str | None) -> Project:
    """Check an existing shoal.yaml and create the database (runs the migrations)."""
    project = Project(root, name=name)
    configured = project.config.get("name")
    if name and configured and configured != name:
        raise ProjectError(f"{root / CONFIG_FILE} already names the project {configured!r}; drop --name or edit it")
    home_existed = project.home.exists()
    try:
        project.store  # noqa: B018 - opening the store creates the database
    except BaseException:
        if not home_existed:
            shutil.rmtree(project.home, ignore_errors=True)
        raise
    finally:
        project.close()
    return project


def _write_files(root: pathlib.Path, name: str, example: bool) -> list[str]:
    created: list[str] = []
    example_file = root / EXAMPLE_FILE
    if example and not example_file.exists():
        text = resources.files("shoal").joinpath(f"examples/{EXAMPLE_FILE}").read_text(encoding="utf-8")
        _write_new(example_file, text)
        created.append(str(example_file))
    config = root / CONFIG_FILE
    if not config.exists():
        functions = {}
        if example and _defines_handler(example_file):
            functions[EXAMPLE_HANDLER] = {"file": EXAMPLE_FILE, "handler": EXAMPLE_HANDLER}
        _write_new(config, _config_text(name, functions))
        created.append(str(config))
    return created


def _defines_handler(path: pathlib.Path) -> bool:
    """Whether ``path`` (ours, or a user's own train.py) defines the handler shoal.yaml would name."""
    from .code import source_from_file

    try:
        source_from_file(path, EXAMPLE_HANDLER)
    except CodeError:
        return False
    return True


def _config_text(name: str, functions: dict) -> str:
    import yaml

    # safe_dump quotes names YAML would read as numbers or booleans ("2024", "yes").
    return yaml.safe_dump({"name": name, "backend": "dask", "functions": functions}, sort_keys=False)


def _write_new(path: pathlib.Path, text: str) -> None:
    """Write beside the target, then rename: an interrupted init leaves no half-written file."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise

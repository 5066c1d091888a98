"""``shoal init``: lay out a new project (shoal.yaml, the .shoal home and its database, an example)."""

from __future__ import annotations

import pathlib
from importlib import resources

from .errors import ProjectError
from .project import CONFIG_FILE, Project, _default_name


def create_project(path: str = ".", *, name: str | None = None, example: bool = True) -> list[str]:
    """Create what is missing; never overwrite a user's file. Returns what was created."""
    root = pathlib.Path(path).resolve()
    if root.exists() and not root.is_dir():
        raise ProjectError(f"{root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    created: list[str] = []
    config = root / CONFIG_FILE
    example_file = root / "train.py"
    add_example = example and not example_file.exists()
    if add_example:
        example_file.write_text(resources.files("shoal").joinpath("examples/train.py").read_text())
        created.append(str(example_file))
    if not config.exists():
        lines = [f"name: {name or _default_name(root)}", "backend: local", "functions:"]
        if add_example or example_file.exists():
            lines += ["  train:", "    file: train.py", "    handler: train"]
        else:
            lines[-1] = "functions: {}"
        config.write_text("\n".join(lines) + "\n")
        created.append(str(config))
    project = Project(root, name=name)
    project.store  # creates the database and runs the migrations
    project.close()
    created.append(project.database)
    return created

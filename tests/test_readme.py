"""The README is true: its Python runs as written, its commands exist and parse, its command list is
complete, and ``import shoal`` reaches the submodules it names without loading an engine.

Every ```python block of README.md runs, in README order, as a script of its own (``python
readme_block_N.py``, how a user runs a snippet they saved) in a fresh interpreter, in a project made
by ``shoal init`` as the quick start makes it. Sizes are made small by the substitutions in
``SMALL_SIZES``, applied to the block's text and nothing else. Blocks in the Kubernetes section need
no cluster to run as written (they define functions); for them the test goes on "up to rendering":
every Function the block defines is rendered to the dask-kubernetes and KubeRay manifests, which
validate them offline. A block that would need a live cluster address is skipped with the reason of
``NEEDS_A_CLUSTER``, never silently.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

README = Path(__file__).resolve().parents[1] / "README.md"

#: Textual substitutions that make a block small (pattern -> replacement), with why.
SMALL_SIZES = [
    (r"\bn_trials=\d+", "n_trials=4"),  # a search of 4 trials shows everything 50 would
    (r"\brange\((\d{3,})\)", "range(20)"),  # maps over hundreds of items: 20 are enough
]

#: A block containing one of these needs a cluster or an engine address that a test machine has not.
NEEDS_A_CLUSTER = {
    r"""backend\s*=\s*["'](dask-k8s|ray-k8s)["']""": "creates a cluster on Kubernetes",
    r"\b(DaskKubernetes|RayKubernetes|KubeCluster)\(": "creates a cluster on Kubernetes",
    r"""["'](ray|dask|tcp|tls)://""": "joins a running cluster by address",
}

BLOCK_TIMEOUT = 600  # seconds; a block that hangs fails the test instead of hanging the suite


@dataclass
class Block:
    language: str
    text: str
    line: int  # where the block starts in README.md, for messages
    section: str  # the "## " heading it sits under


def blocks(language: str | None = None) -> list[Block]:
    """The fenced blocks of README.md (``language=""``: blocks without a language)."""
    found, section, current = [], "", None
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        if current is None:
            if line.startswith("## "):
                section = line[3:].strip()
            fence = re.match(r"^```(\S*)\s*$", line)
            if fence:
                current = Block(fence.group(1), "", number, section)
        elif line.startswith("```"):
            found.append(current)
            current = None
        else:
            current.text += line + "\n"
    return [b for b in found if language is None or b.language == language]


def small(text: str) -> str:
    for pattern, replacement in SMALL_SIZES:
        text = re.sub(pattern, replacement, text)
    return text


def clean_env() -> dict[str, str]:
    """The environment of a new user: no shoal settings, no engine addresses."""
    drop = ("SHOAL_", "RAY_ADDRESS", "DASK_SCHEDULER_ADDRESS")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | {"PYTHONUNBUFFERED": "1"}


def run_script(path: Path, cwd: Path, timeout: float = BLOCK_TIMEOUT) -> subprocess.CompletedProcess:
    """``python path`` in its own process group, killed as a group if it outlives ``timeout``."""
    proc = subprocess.Popen(
        [sys.executable, str(path)], cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{path.name} did not finish within {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    finally:
        try:  # whatever the script left in its group (engine processes) goes with it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


RENDER_EPILOGUE = textwrap.dedent(
    """

    # -- added by tests/test_readme.py: "up to rendering" ------------------------------------------
    import shoal.backends.kubernetes as _k8s

    _functions = [value for value in list(globals().values()) if isinstance(value, shoal.Function)]
    assert _functions, "the Kubernetes block defines no function to render"
    for _fn in _functions:
        for _engine in ("dask", "ray"):
            _objects = _k8s.render(_fn, _engine, namespace="ml")
            assert _objects and all(o["metadata"]["name"] for o in _objects), _engine
            print("rendered", _fn.name, _engine, [o["kind"] for o in _objects])
    """
)


# -- the Python blocks ---------------------------------------------------------------------------
def test_readme_python_blocks_run_as_written(tmp_path):
    python_blocks = blocks("python")
    assert python_blocks, "README.md has no python block"
    init = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "init", "demo"], cwd=tmp_path, env=clean_env(),
        capture_output=True, text=True, timeout=120,
    )
    assert init.returncode == 0, init.stderr
    project = tmp_path / "demo"
    skipped = []
    for index, block in enumerate(python_blocks, start=1):
        reasons = [why for pattern, why in NEEDS_A_CLUSTER.items() if re.search(pattern, block.text)]
        if reasons:
            skipped.append(f"README line {block.line}: {reasons[0]}")
            continue
        code = small(block.text)
        if "Kubernetes" in block.section:
            code += RENDER_EPILOGUE
        script = project / f"readme_block_{index}.py"
        script.write_text(code, encoding="utf-8")
        done = run_script(script, project)
        where = f"README.md line {block.line} ({block.section}), run as {script.name}"
        assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, f"{where} printed a traceback:\n{done.stderr}"
        if "Kubernetes" in block.section:
            assert "rendered" in done.stdout, done.stdout
    for reason in skipped:  # said, not silent: pytest lists it in its warnings summary
        warnings.warn(f"README python block not run: {reason}", stacklevel=1)
    assert len(skipped) < len(python_blocks), "every python block was skipped"


# -- the command blocks ----------------------------------------------------------------------------
def _cli():
    import typer.main

    from shoal.cli.main import app

    return typer.main.get_command(app)


def _shoal_commands(text: str) -> list[list[str]]:
    """The ``shoal`` (or ``.../shoal``) invocations of a bash block, as argument lists.

    Line continuations are joined; ``[...]`` groups are optional arguments of a synopsis and are left
    out; pipes, ``&&`` and ``;`` separate commands; ``#`` starts a comment.
    """
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s\[[^\]]*\]", " ", line)
        for part in re.split(r"\|\||&&|\||;", line):
            words = shlex.split(part, comments=True)
            if words and (words[0] == "shoal" or words[0].endswith("/shoal")):
                commands.append(words[1:])
    return commands


def _parse(args: list[str]) -> None:
    """Parse ``shoal ARGS`` as click would before running it (no command callback runs)."""
    command = _cli()
    ctx = command.make_context("shoal", list(args))
    while hasattr(command, "resolve_command"):  # a group: its subcommand is the first word left
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            raise ValueError(f"`{ctx.command_path}` needs a subcommand")
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)


def test_readme_shell_commands_parse():
    commands = [(block, args) for block in blocks("bash") for args in _shoal_commands(block.text)]
    assert len(commands) >= 5, commands
    for block, args in commands:
        try:
            _parse(args)
        except Exception as exc:  # click's UsageError and friends
            pytest.fail(f"README.md line {block.line}: `shoal {shlex.join(args)}` does not parse: {exc}")


def _leaf_commands(command, path=()) -> list[tuple[str, ...]]:
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        return [path]
    return [leaf for name, sub in sorted(subcommands.items()) if not sub.hidden for leaf in _leaf_commands(sub, (*path, name))]


def _options_of(command) -> set[str]:
    names = set()
    for param in command.params:
        names.update(getattr(param, "opts", ()))
        names.update(getattr(param, "secondary_opts", ()))
    return names


def _synopsis() -> dict[tuple[str, ...], set[str]]:
    """The README's command list: each command path it names, with the options it gives it.

    An entry is ``shoal PATH ARGS`` (indented lines continue it); `` | `` separates alternatives, which are siblings of the last
    word of PATH (``runs list ... | show UID``) or more arguments (``run FILE.py:HANDLER | NAME``).
    """
    [listing] = [b for b in blocks("") if b.section == "Command line" and "shoal " in b.text]
    root, named = _cli(), {}

    def subcommands(path: tuple[str, ...]) -> dict:
        command = root
        for name in path:
            command = command.commands[name]
        return getattr(command, "commands", {})

    joined = re.sub(r"\n[ \t]+", " ", listing.text)  # an indented line continues the entry above
    for line in joined.splitlines():
        for entry in re.split(r"\s{3,}(?=shoal\b)", line.strip()):  # several entries on one line
            if not entry.startswith("shoal "):
                continue
            path: tuple[str, ...] | None = None
            for alternative in entry[len("shoal "):].split(" | "):
                tokens = alternative.split()
                if path is None:
                    path = ()
                    while tokens and tokens[0] in subcommands(path):
                        path, tokens = (*path, tokens[0]), tokens[1:]
                elif path and tokens and tokens[0] in subcommands(path[:-1]):
                    path, tokens = (*path[:-1], tokens[0]), tokens[1:]
                options = named.setdefault(path, set())
                for token in tokens:
                    options.update(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", token))
    return named


def test_readme_command_list_is_complete_and_true():
    root = _cli()
    named = _synopsis()
    leaves = set(_leaf_commands(root))
    missing = sorted(" ".join(leaf) for leaf in leaves if leaf not in named)
    assert not missing, f"the README's command list misses: {', '.join(missing)}"
    for path, options in named.items():
        command = root
        for name in path:
            assert name in getattr(command, "commands", {}), f"README names `shoal {' '.join(path)}`, which does not exist"
            command = command.commands[name]
        known = _options_of(command) | _options_of(root) | {"-h", "--help"}
        unknown = sorted(options - known)
        assert not unknown, f"README gives `shoal {' '.join(path)}` options it does not have: {unknown}"


def test_every_listed_command_has_help(tmp_path):
    """``shoal PATH --help`` of every command the README lists, as a user would type it."""
    paths = sorted(path for path in _synopsis() if path)
    script = textwrap.dedent(
        f"""
        import json, sys
        from shoal.cli.main import main
        failed = []
        for path in {json.dumps([list(p) for p in paths])}:
            try:
                main([*path, "--help"])
            except SystemExit as exc:
                if exc.code not in (0, None):
                    failed.append(path)
        print(json.dumps(failed), file=sys.stderr)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
    for path in paths:
        assert f" {' '.join(path)} [OPTIONS]" in done.stdout, path  # each usage line was printed


# -- submodules as attributes, lazily ----------------------------------------------------------------------
ENGINES = ("ray", "dask", "distributed", "optuna", "kubernetes")


def _fresh(code: str, tmp_path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_submodules_are_attributes_loaded_lazily_without_engines(tmp_path):
    seen = _fresh(
        f"""
        import json, sys
        import shoal
        loaded = {{"after import": sorted(n for n in sys.modules if n.startswith("shoal.") and n.count(".") == 1)}}
        backends, tuning, kubernetes = shoal.backends, shoal.tuning, shoal.backends.kubernetes
        loaded["engines"] = [name for name in {ENGINES!r} if name in sys.modules]
        loaded["names"] = [backends.__name__, tuning.__name__, kubernetes.__name__, tuning.Float.__name__,
                           kubernetes.SpotConfig.__name__]
        loaded["dir"] = [name in dir(shoal) for name in ("backends", "tuning")]
        try:
            shoal.nosuch
        except AttributeError as exc:
            loaded["error"] = str(exc)
        print(json.dumps(loaded))
        """,
        tmp_path,
    )
    assert "shoal.backends" not in seen["after import"] and "shoal.tuning" not in seen["after import"]
    assert seen["engines"] == []
    assert seen["names"] == ["shoal.backends", "shoal.tuning", "shoal.backends.kubernetes", "Float", "SpotConfig"]
    assert seen["dir"] == [True, True]
    assert seen["error"] == "module 'shoal' has no attribute 'nosuch'"


def test_readme_backend_object_example_runs(tmp_path):
    """The README's `with shoal.backends.get("dask", n_workers=4) as dask: fn.map(items, backend=dask)`."""
    (tmp_path / "square.py").write_text("def square(x: int):\n    return x * x\n")
    seen = _fresh(
        """
        import json
        import shoal

        fn = shoal.Function.from_file("square.py", "square")
        with shoal.backends.get("dask", n_workers=2) as dask:
            runs = fn.map([{"x": x} for x in range(6)], backend=dask)
        print(json.dumps([run.results["return"] for run in runs]))
        """,
        tmp_path,
    )
    assert seen == [0, 1, 4, 9, 16, 25]


def test_import_shoal_stays_light(tmp_path):
    """``import shoal`` loads no engine and no database layer (``shoal --help`` has none to wait for).
    Its import time is a benchmark figure, not a test: ``python -X importtime -c "import shoal"``."""
    heavy = (*ENGINES, "sqlalchemy", "alembic", "pandas", "pyarrow", "plotly")
    seen = _fresh(f"import json, sys, shoal; print(json.dumps([n for n in {heavy!r} if n in sys.modules]))", tmp_path)
    assert seen == []


# -- the quick start installs what it uses --------------------------------------------------------------
def _requirement_names(specifiers: list[str]) -> set[str]:
    from packaging.requirements import Requirement

    return {Requirement(spec).name.lower().replace("_", "-") for spec in specifiers}


def test_quick_start_installs_only_what_the_embedded_default_needs():
    """The quick start's extra brings the engine of the project's default backend, and the example
    ``train.py`` that ``shoal init`` writes imports nothing beyond shoal's own dependencies."""
    import ast
    from importlib import resources

    tomllib = pytest.importorskip("tomllib", reason="pyproject.toml is read with Python 3.11's tomllib")

    from shoal.scaffold import _config_text

    meta = tomllib.loads((README.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    [quick_start] = [b for b in blocks("bash") if b.section == "Quick start" and "shoal init" in b.text]
    [extra] = re.findall(r"pip install -q -e '\.\[(\w+)\]'", quick_start.text)  # quiet, one extra
    assert extra != "all"
    installed = _requirement_names(meta["dependencies"] + meta["optional-dependencies"][extra])
    default_backend = yaml.safe_load(_config_text("demo", {}))["backend"]
    assert default_backend == "dask" and {"dask", "distributed"} <= installed

    example = resources.files("shoal").joinpath("examples/train.py").read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(example)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    outside = sorted(imported - installed - {"shoal"} - set(sys.stdlib_module_names))
    assert not outside, f"the example train.py imports {outside}, which the quick start does not install"

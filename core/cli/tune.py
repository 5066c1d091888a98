"""``shoal tune`` (a search with a live progress bar) and ``shoal studies list | show | delete NAME``.

Optuna and the tuning package are imported when a command runs, so ``shoal --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import typer

from . import output

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import TaskID

studies_app = typer.Typer(help="Tuning studies in the project's study storage.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``tune`` and ``studies`` to the main command line."""
    app.command("tune")(tune)
    app.add_typer(studies_app, name="studies")


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says what matters


def tune(
    target: str = typer.Argument(..., help="FILE.py:HANDLER, or a function NAME[:tag|@hash]."),
    space: list[str] = typer.Option(
        [],
        "--space",
        "-s",
        help="NAME=SPEC (repeatable): loguniform(1e-4,1), uniform(0,1), float(0,1,step=0.1), int(2,10), \\[a,b,c], or a constant.",
    ),
    objective: list[str] = typer.Option(
        [],
        "--objective",
        "-o",
        help="max.KEY or min.KEY (repeat for several); default max.accuracy, or the returned value for an Optuna objective (first parameter trial).",
    ),
    direction: list[str] = typer.Option(
        [],
        "--direction",
        "-d",
        help="minimize or maximize: optimise the value the handler returns, as optuna.create_study (repeat for several objectives; an Optuna objective's default: minimize).",
    ),
    trials: int | None = typer.Option(
        None, "--trials", "-n", min=1, help="Total trials of the study (default: the grid size)."
    ),
    backend: str | None = typer.Option(
        None,
        "--backend",
        "-b",
        help="local, dask, ray, or an address (default: the function's or the project's backend).",
    ),
    storage: str | None = typer.Option(None, "--storage", help="Study storage URL (default: the project's)."),
    study: str | None = typer.Option(None, "--study", help="Study name (default: the function name)."),
    strategy: str = typer.Option("tpe", "--strategy", help="tpe, random, grid, list, cmaes or nsga2."),
    pruner: str | None = typer.Option(
        None,
        "--pruner",
        help="median (from the 3rd trial), hyperband, successive-halving, or none (default: Optuna's own, MedianPruner()).",
    ),
    parallelism: int | None = typer.Option(
        None, "--parallelism", "-j", min=1, help="Trials in flight (default: the backend's slots)."
    ),
    timeout: float | None = typer.Option(None, "--timeout", help="Wall-clock budget in seconds."),
    stop_when: str | None = typer.Option(None, "--stop-when", help="Stop asking new trials once e.g. accuracy>=0.95."),
    max_failures: int | None = typer.Option(None, "--max-failures", min=1, help="Stop after this many failed trials."),
    seed: int | None = typer.Option(None, "--seed", help="Sampler seed."),
    plot: str | None = typer.Option(None, "--plot", help="Write a plot: .html (interactive) or .png."),
    plot_kind: str = typer.Option("history", "--plot-kind", help="history, importance or parallel."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run a hyperparameter search: every trial is a recorded run (exit 1 if no trial completed)."""
    from shoal.tuning.space import parse_assignment
    from shoal.tuning.wording import command_line

    from .targets import load_target as _load_target
    from .targets import open_project as _project
    from .targets import stdout_reserved as _stdout_reserved

    parsed = dict(parse_assignment(item) for item in space)  # bad specs fail before anything loads
    with _stdout_reserved(as_json), command_line(), _warnings_as_lines():
        fn = _load_target(target)
        project = _project()
        _quiet_optuna()
        from shoal.tuning import tune as run_search

        options: dict[str, Any] = dict(
            objective=(objective[0] if len(objective) == 1 else list(objective)) if objective else None,
            direction=direction[0] if len(direction) == 1 else None,
            directions=list(direction) if len(direction) > 1 else None,
            n_trials=trials,
            backend=backend,
            storage=storage,
            study=study,
            strategy=strategy,
            pruner=pruner,
            parallelism=parallelism,
            timeout=timeout,
            stop_when=stop_when,
            max_failures=max_failures,
            seed=seed,
            project=project,
        )
        if as_json:
            result = run_search(fn, parsed, **options)
        else:
            with _ProgressBar() as bar:
                result = run_search(fn, parsed, progress=bar.update, **options)
        written = result.plot(plot_kind, plot) if plot else None
    data = result.to_dict()
    if written is not None:
        data["plot"] = str(written)
    if as_json:
        output.print_json(data)
    else:
        _summary(result, data)
    completed = any(t["state"] == "complete" for t in data["trials"])
    if not completed or result.stopped == "max_failures":
        raise typer.Exit(1)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """shoal's own warnings (e.g. a parallelism the replicas cannot meet) as ``warning: ...`` lines
    on stderr, not Python's file:line form; other warnings are shown as usual."""
    shown = warnings.showwarning

    from shoal.errors import ShoalWarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if issubclass(category, ShoalWarning):
            output.errors.print(
                f"[bold yellow]warning:[/] {output.one_line(str(message))}",
                soft_wrap=True,
                markup=True,
                highlight=False,
            )
            return
        shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


class _ProgressBar:
    """A rich progress bar on stderr: trials done of n, running, failed, pruned, best so far."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("running {task.fields[running]}  failed {task.fields[failed]}  pruned {task.fields[pruned]}"),
            TextColumn("best {task.fields[best]}"),
            TimeElapsedColumn(),
            console=output.errors,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> _ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.progress.stop()

    def update(self, state: Any) -> None:
        fields = dict(
            running=state.running,
            failed=state.failed,
            pruned=state.pruned,
            best="-" if state.best_value is None else f"{state.best_value:.6g} (trial {state.best_trial})",
        )
        if self.task is None:
            self.task = self.progress.add_task(
                f"study {state.study}", total=state.n_trials, completed=state.done, **fields
            )
        self.progress.update(self.task, completed=state.done, **fields)


def _summary(result: Any, data: dict) -> None:
    counts: dict[str, int] = {}
    for trial in data["trials"]:
        counts[trial["state"]] = counts.get(trial["state"], 0) + 1
    shown = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    output.console.print(f"study {data['study']}: {len(data['trials'])} trials ({shown}); stopped: {data['stopped']}")
    if result.multi_objective:
        output.console.print(f"pareto front: {len(data['best_trials'])} trials")
        for trial in data["best_trials"]:
            output.console.print(
                f"  trial {trial['number']}: values {trial['values']} params {trial['params']} run {trial['run']}"
            )
    elif data.get("best_trial") is not None:
        output.console.print(
            f"best value {data['best_value']:.6g} (trial {data['best_trial']}, run {data['best_run']})"
        )
        for key, value in data["best_params"].items():
            output.console.print(f"  {key} = {value!r}")
    else:
        output.console.print("no trial completed")
    output.console.print(f"parent run {data['parent']}")
    if data.get("plot"):
        output.console.print(f"plot written to {data['plot']}")


# -- shoal studies --------------------------------------------------------------------------------
def _storage(storage: str | None):
    from shoal.tuning import storage as storages

    from .targets import open_project as _project

    _quiet_optuna()
    ref = storages.resolve(storage, _project())
    return ref, ref.open()


def _study_dict(study: Any, top: int = 0) -> dict[str, Any]:
    from optuna.trial import TrialState

    from shoal.tuning.result import trial_dict

    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    directions = [d.name.lower() for d in study.directions]
    out: dict[str, Any] = {"name": study.study_name, "directions": directions, "trials": states, "best_value": None}
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if completed and len(directions) == 1:
        best = study.best_trial
        out.update(best_value=best.value, best_trial=trial_dict(best))
    elif completed:
        out["best_trials"] = [trial_dict(t) for t in study.best_trials]
    if top and completed and len(directions) == 1:
        ordered = sorted(completed, key=lambda t: t.value, reverse=directions[0] == "maximize")
        out["top"] = [trial_dict(t) for t in ordered[:top]]
    return out


@studies_app.command("list")
def studies_list(
    storage: str | None = typer.Option(None, "--storage", help="Study storage URL (default: the project's)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every study: name, direction(s), trials by state, best value."""
    import optuna

    ref, store = _storage(storage)
    rows = [
        _study_dict(optuna.load_study(study_name=s.study_name, storage=store))
        for s in optuna.get_all_study_summaries(store, include_best_trial=False)
    ]
    if as_json:
        output.print_json(rows)
        return
    cells = (
        (
            row["name"],
            ", ".join(row["directions"]),
            ", ".join(f"{n} {state}" for state, n in sorted(row["trials"].items())) or "none",
            "-" if row["best_value"] is None else f"{row['best_value']:.6g}",
        )
        for row in rows
    )
    output.print_table(f"studies in {ref.describe()}", ("name", "directions", "trials", "best value"), cells)


@studies_app.command("show")
def studies_show(
    name: str = typer.Argument(..., help="Study name."),
    storage: str | None = typer.Option(None, "--storage", help="Study storage URL (default: the project's)."),
    top: int = typer.Option(10, "--top", min=1, help="How many of the best trials to list."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One study: its best trial and parameters, and the top trials."""
    from shoal.tuning import load_study

    ref, _ = _storage(storage)
    from .targets import open_project as _project

    data = _study_dict(load_study(name, project=_project(), storage=storage), top=top)
    if as_json:
        output.print_json(data)
        return
    trials = ", ".join(f"{n} {state}" for state, n in sorted(data["trials"].items())) or "none"
    output.console.print(f"study {name} ({', '.join(data['directions'])}) in {ref.describe()}: {trials}")
    best = data.get("best_trial")
    if best:
        output.console.print(f"best value {best['values'][0]:.6g}: trial {best['number']}, run {best['run']}")
        for key, value in best["params"].items():
            output.console.print(f"  {key} = {value!r}")
    trials_shown = data.get("top") or data.get("best_trials") or []
    if trials_shown:
        cells = (
            (
                str(trial["number"]),
                str(trial["values"]),
                str(trial["params"]),
                "-" if trial["duration"] is None else f"{trial['duration']:.2f}s",
                (trial["run"] or "-")[:12],
            )
            for trial in trials_shown
        )
        title = "top trials" if "top" in data else "pareto front"
        output.print_table(title, ("trial", "values", "params", "duration", "run"), cells)


@studies_app.command("delete")
def studies_delete(
    name: str = typer.Argument(..., help="Study name."),
    storage: str | None = typer.Option(None, "--storage", help="Study storage URL (default: the project's)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
) -> None:
    """Delete a study and its trials, e.g. to rerun `shoal tune` with another space (runs stay recorded)."""
    from shoal.tuning import delete_study, load_study

    from .targets import open_project as _project

    ref, _ = _storage(storage)
    project = _project()
    trials = len(load_study(name, project=project, storage=storage).get_trials(deepcopy=False))  # NotFoundError
    if not yes and not _confirmed(f"delete study {name!r} and its {trials} trial(s) from {ref.describe()}?"):
        typer.echo("nothing deleted (pass --yes to delete without asking)", err=True)
        raise typer.Exit(1)
    deleted = delete_study(name, project=project, storage=storage)
    output.console.print(f"deleted study {name} ({deleted} trial(s)) from {ref.describe()}")


def _confirmed(question: str) -> bool:
    """Ask (stdin may be a pipe: ``echo y | shoal studies delete NAME``); no answer is a no."""
    try:
        return typer.confirm(question, default=False)
    except typer.Abort:  # end of input
        return False

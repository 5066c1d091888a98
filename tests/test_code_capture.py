"""Code capture (shoal.code): annotations, encodings, __main__ scripts, the REPL, notebooks, and
rebuilding the handler in another process that does not have the user's files.

Scripts and the REPL are real subprocesses; a function document travels between them as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest

import shoal
from shoal.code import Code, apply_annotations, bytecode_digest, capture
from shoal.errors import CodeError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def python(args: list[str], cwd: Path, stdin: str | None = None, seed: str = "0") -> str:
    """Run a fresh interpreter; return stdout (fail with stderr)."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": seed},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def lines_with(prefix: str, output: str) -> list[str]:
    return [line[len(prefix) :] for line in output.splitlines() if line.startswith(prefix)]


REBUILD = (
    "import json, sys, shoal\n"
    "fn = shoal.Function.from_dict(json.load(open(sys.argv[1])))\n"
    "print('HASH', fn.hash)\n"
    "print('CALL', json.dumps(fn(*json.loads(sys.argv[2]))))\n"
)


def rebuild_elsewhere(document: dict, args: list, tmp_path: Path) -> tuple[str, object]:
    """from_dict + call in a new process, in a folder without the user's code; (hash, result)."""
    empty = tmp_path / "worker"
    empty.mkdir(exist_ok=True)
    doc_path = empty / "function.json"
    doc_path.write_text(json.dumps(document))
    out = python(["-c", REBUILD, str(doc_path), json.dumps(args)], empty)
    return lines_with("HASH ", out)[0], json.loads(lines_with("CALL ", out)[0])


# -- annotations ----------------------------------------------------------------------------------


def test_ignore_blanks_only_that_line_and_keeps_line_numbers():
    text = "import os\nimport local_debug_tool  # shoal: ignore\nx = 1\n"
    kept, first = apply_annotations(text)
    assert kept == "import os\n\nx = 1\n" and first == 1


@pytest.mark.parametrize(
    "line",
    ["import dbg  # shoal: ignore", "import dbg  #shoal:ignore", "import dbg  # shoal: ignore (local only)"],
)
def test_ignore_comment_spellings(line):
    assert "dbg" not in apply_annotations(f"a = 1\n{line}\nb = 2\n")[0]


def test_ignore_mark_inside_a_string_is_not_a_comment():
    text = 'MARK = "# shoal: ignore"\nx = 1  # shoal: ignored later, not a mark\n'
    assert apply_annotations(text)[0] == text


def test_start_and_end_code_keep_only_the_region():
    text = "setup = 1\n# shoal: start-code\ndef f():\n    return 2\n# shoal: end-code\nf()\n"
    kept, first = apply_annotations(text)
    assert kept == "def f():\n    return 2\n" and first == 3


def test_start_without_end_runs_to_the_end_and_end_before_start_is_ignored():
    assert apply_annotations("a\n# shoal: start-code\nb\nc\n") == ("b\nc\n", 3)
    assert apply_annotations("# shoal: end-code\na\n# shoal: start-code\nb\n") == ("b\n", 4)


def test_region_and_ignore_together(tmp_path):
    path = write(
        tmp_path / "nb_export.py",
        "import not_on_workers\nexperiment = not_on_workers.run()\n"
        "# shoal: start-code\nimport math\nimport also_not_there  # shoal: ignore\n\n"
        "def area(r):\n    return math.pi * r * r\n# shoal: end-code\nprint(area(2))\n",
    )
    fn = shoal.Function.from_file(path, "area")
    assert fn.code.first_line == 4 and "not_on_workers" not in fn.code.text and "also_not_there" not in fn.code.text
    assert fn(1.0) == pytest.approx(3.14159, rel=1e-5)


def test_edits_outside_the_shipped_code_keep_the_hash(tmp_path):
    base = "print('setup')  # shoal: ignore\n# shoal: start-code\ndef f():\n    return 1\n# shoal: end-code\n"
    first = shoal.Function.from_file(write(tmp_path / "a.py", base), "f").hash
    outside = base.replace("print('setup')", "print('other setup')") + "print('after')\n"
    assert shoal.Function.from_file(write(tmp_path / "b.py", "# header\n" + outside), "f").hash == first
    inside = base.replace("return 1", "return 2")
    assert shoal.Function.from_file(write(tmp_path / "c.py", inside), "f").hash != first


def test_syntax_error_inside_a_region_names_the_line_of_the_file(tmp_path):
    path = write(tmp_path / "r.py", "this is not python\n# shoal: start-code\nx = 1\ndef f(:\n    pass\n# shoal: end-code\n")
    with pytest.raises(CodeError, match=r"syntax error in .*r\.py line 4"):
        shoal.Function.from_file(path, "f")


def test_tracebacks_point_at_the_users_file_and_line(tmp_path):
    path = write(tmp_path / "t.py", "junk junk\n# shoal: start-code\n\n\ndef f():\n    return 1 / 0\n")
    fn = shoal.Function.from_file(path, "f")
    with pytest.raises(ZeroDivisionError) as info:
        fn()
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (frame.filename, frame.lineno, frame.line) == (str(path), 6, "return 1 / 0")


# -- encodings and line endings ------------------------------------------------------------------------


def test_crlf_and_lf_files_ship_the_same_code(tmp_path):
    text = "def f():\n    return 'x'\n"
    lf = shoal.Function.from_file(write(tmp_path / "lf.py", text), "f")
    crlf = shoal.Function.from_file(write(tmp_path / "crlf.py", text.replace("\n", "\r\n")), "f")
    assert crlf.code.text == lf.code.text and crlf.hash == lf.hash and crlf() == "x"


def test_utf8_bom_and_coding_declaration_are_honoured(tmp_path):
    bom = shoal.Function.from_file(write(tmp_path / "bom.py", "def f():\n    return 'é'\n", "utf-8-sig"), "f")
    assert bom() == "é" and not bom.code.text.startswith("\ufeff")
    latin = write(tmp_path / "latin.py", "# -*- coding: latin-1 -*-\ndef f():\n    return 'é'\n", "latin-1")
    assert shoal.Function.from_file(latin, "f")() == "é"
    undeclared = write(tmp_path / "bad.py", "def f():\n    return 'é'\n", "latin-1")
    with pytest.raises(CodeError, match=r"cannot read .*bad\.py.*UTF-8"):
        shoal.Function.from_file(undeclared, "f")


def test_unicode_line_separators_and_form_feeds_are_not_line_breaks(tmp_path):
    path = write(tmp_path / "u.py", 'S = "a\u2028b\x0cc"\n\x0c\ndef f():\n    return S\n\n\ndef g():\n    return 1 / 0\n')
    fn = shoal.Function.from_file(path, "f")
    assert fn() == "a\u2028b\x0cc"
    with pytest.raises(ZeroDivisionError) as info:
        shoal.Function.from_file(path, "g")()
    assert traceback.extract_tb(info.value.__traceback__)[-1].lineno == 8


# -- what counts as defined ------------------------------------------------------------------------------


def test_handlers_bound_in_blocks_and_by_unpacking_are_found(tmp_path):
    path = write(
        tmp_path / "m.py",
        "try:\n    import json\nexcept ImportError:\n    json = None\nelse:\n"
        "    def dumps(x):\n        return json.dumps(x)\n"
        "first, second = (lambda: 1), (lambda: 2)\n"
        "if True:\n    class Model:\n        def predict(self=None):\n            return 3\n",
    )
    assert shoal.Function.from_file(path, "dumps")([1]) == "[1]"
    assert shoal.Function.from_file(path, "second")() == 2
    assert shoal.Function.from_file(path, "Model.predict")() == 3


def test_from_file_refuses_a_handler_under_the_main_guard(tmp_path):
    path = write(tmp_path / "g.py", "if __name__ == '__main__':\n    def f():\n        return 1\n")
    with pytest.raises(CodeError, match="handler 'f' not found"):
        shoal.Function.from_file(path, "f")


# -- rebuilding without the checkout ---------------------------------------------------------------------


def test_workers_rebuild_from_the_captured_source_without_the_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = write(src / "job.py", "import math\n\n\ndef hyp(a, b):\n    return math.hypot(a, b)\n")
    fn = shoal.Function.from_file(path, "hyp")
    document = fn.to_dict()
    path.unlink()
    src.rmdir()
    assert rebuild_elsewhere(document, [3, 4], tmp_path) == (fn.hash, 5.0)


def test_a_decorated_module_function_ships_its_file(tmp_path, monkeypatch):
    write(tmp_path / "mymod.py", "import shoal\n\n@shoal.function(cpu='1')\ndef inc(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mymod

    try:
        assert mymod.inc.code.kind == "source" and mymod.inc.code.origin == str(tmp_path / "mymod.py")
        assert mymod.inc(1) == 2
        document = mymod.inc.to_dict()
        (tmp_path / "mymod.py").unlink()
        assert rebuild_elsewhere(document, [41], tmp_path) == (mymod.inc.hash, 42)
    finally:
        sys.modules.pop("mymod", None)


SCRIPT = textwrap.dedent(
    """\
    import json, pathlib, sys
    import shoal

    OFFSET = 5
    pathlib.Path("imported.txt").open("a").write("x")


    @shoal.function(cpu="500m")
    def add(x):
        return x + OFFSET


    if __name__ == "__main__":
        def guarded(x):
            return x * OFFSET

        g = shoal.function("guarded")(guarded)
        pathlib.Path("main-ran.txt").write_text("1")
        print("ADD", add.hash, add.code.kind, add(1))
        print("DOC", json.dumps(add.to_dict()))
        print("GUARDED", g.hash, g.code.kind, json.dumps(g.to_dict()))
    """
)


def test_main_script_functions_hash_the_same_anywhere_and_rebuild_elsewhere(tmp_path):
    runs = []
    for folder in ("one", "two"):
        where = tmp_path / folder
        where.mkdir()
        write(where / "script.py", SCRIPT)
        runs.append(python(["script.py"], where, seed=str(len(runs) + 1)))
    (add_one, guarded_one), (add_two, guarded_two) = [
        (lines_with("ADD ", out)[0].split(), lines_with("GUARDED ", out)[0].split(" ", 2)) for out in runs
    ]
    assert add_one[0] == add_two[0] and add_one[1:] == ["source", "6"]
    assert guarded_one[0] == guarded_two[0] and guarded_one[1] == "pickle"  # defined under the guard
    for folder in ("one", "two"):
        (tmp_path / folder / "script.py").unlink()
    document = json.loads(lines_with("DOC ", runs[0])[0])
    assert rebuild_elsewhere(document, [1], tmp_path) == (add_one[0], 6)
    # the worker ran the module's top level (not the __main__ block) in its own folder
    assert (tmp_path / "worker" / "imported.txt").read_text() == "x"
    assert (tmp_path / "one" / "main-ran.txt").exists() and not (tmp_path / "worker" / "main-ran.txt").exists()
    assert rebuild_elsewhere(json.loads(guarded_one[2]), [2], tmp_path) == (guarded_one[0], 10)


REPL = textwrap.dedent(
    """\
    import json
    import shoal
    SCALE = {scale}

    def make(k):
        def times(x):
            return x * k
        return times

    def kw(*, k={k}):
        return k

    @shoal.function
    def member(x):
        return x in {{"alpha", "beta", "gamma", "delta", "epsilon"}}

    @shoal.function
    def scaled(x):
        return helper(x) * SCALE

    def helper(x):
        return x + 1

    class Box:
        pass

    def with_defaults(x, cb=helper, tags=frozenset({{"a", "b", "c", "d"}}), box=Box()):
        return cb(x)

    two = shoal.function("two")(make(2))
    three = shoal.function("three")(make(3))
    print("KINDS", two.code.kind, member.code.kind, scaled.code.kind)
    print("CLOSURES", two.hash, three.hash, two(5), three(5))
    print("MEMBER", member.hash)
    print("SCALED", scaled.hash, scaled(1))
    print("KW", shoal.function("kw")(kw).hash)
    print("DEFAULTS", shoal.function("d")(with_defaults).hash)
    print("DOC", json.dumps(scaled.to_dict()))
    """
)


def repl(scale: int = 10, k: int = 1, seed: str = "0", interactive: bool = False, cwd: Path | None = None) -> dict:
    flag = ["-i"] if interactive else ["-"]
    out = python(flag, cwd, stdin=REPL.format(scale=scale, k=k), seed=seed)
    return {key: lines_with(key + " ", out)[0] for key in ("KINDS", "CLOSURES", "MEMBER", "SCALED", "KW", "DEFAULTS", "DOC")}


def test_repl_functions_ship_by_value_and_hash_what_they_do(tmp_path):
    first = repl(seed="1", cwd=tmp_path)
    again = repl(seed="2", cwd=tmp_path)
    assert first["KINDS"] == "pickle pickle pickle"
    two, three, *results = first["CLOSURES"].split()
    assert results == ["10", "15"]
    assert two != three  # same code, different captured value
    assert first["MEMBER"] == again["MEMBER"]  # set constants do not depend on the hash seed
    assert first["SCALED"] == again["SCALED"] and first["KW"] == again["KW"]
    assert first["DEFAULTS"] == again["DEFAULTS"]  # defaults holding functions, objects and sets
    assert first["SCALED"].split()[1] == "20"
    changed_global = repl(scale=11, cwd=tmp_path)
    changed_kwdefault = repl(k=2, cwd=tmp_path)
    assert changed_global["SCALED"].split()[0] != first["SCALED"].split()[0]
    assert changed_kwdefault["KW"] != first["KW"]
    scaled_hash = first["SCALED"].split()[0]
    assert rebuild_elsewhere(json.loads(first["DOC"]), [2], tmp_path) == (scaled_hash, 30)


def test_interactive_interpreter_works_too(tmp_path):
    script = "import shoal\ndef f(x):\n    return x - 1\n\nfn = shoal.function('f')(f)\nprint('OUT', fn.code.kind, fn(3))\n"
    out = python(["-i"], tmp_path, stdin=script)
    assert "OUT pickle 2" in out


NOTEBOOK = textwrap.dedent(
    """\
    import json, linecache, sys
    cells = [
        "import math\\nRADIUS_UNIT = 2\\n",
        "import shoal\\n@shoal.function\\ndef area(r):\\n    return math.pi * (r * RADIUS_UNIT) ** 2\\nprint('SIDE EFFECT')\\n",
    ]
    namespace = {"__name__": "__main__"}
    for number, cell in enumerate(cells):  # how IPython runs cells: compiled under a name kept in linecache
        filename = f"/tmp/ipykernel_0/{number}-does-not-exist.py"
        linecache.cache[filename] = (len(cell), None, cell.splitlines(True), filename)
        exec(compile(cell, filename, "exec"), namespace)
    fn = namespace["area"]
    print("KIND", fn.code.kind, fn.hash)
    print("DOC", json.dumps(fn.to_dict()))
    """
)


def test_notebook_cells_ship_by_value_with_their_globals(tmp_path):
    out = python(["-c", NOTEBOOK], tmp_path)
    kind, digest = lines_with("KIND ", out)[0].split()
    assert kind == "pickle"
    fn_hash, value = rebuild_elsewhere(json.loads(lines_with("DOC ", out)[0]), [1], tmp_path)
    assert fn_hash == digest and value == pytest.approx(12.566370614359172)


# -- capture in this process --------------------------------------------------------------------------


def make_adder(n):
    def add(x):
        return x + n

    return add


def test_closures_and_lambdas_ship_by_value():
    five, six = shoal.function("five")(make_adder(5)), shoal.function("six")(make_adder(6))
    assert five.code.kind == six.code.kind == "pickle"
    assert five.hash != six.hash and five(1) == 6
    square = shoal.function("square")(lambda x: x * x)
    assert square.code.kind == "pickle" and square(3) == 9
    rebuilt = shoal.Function.from_dict(square.to_dict())
    assert rebuilt.hash == square.hash and rebuilt(4) == 16


def test_bytecode_digest_follows_closure_data_exactly():
    def over(values):
        return lambda: sum(values)

    big = list(range(10_000))
    changed = big[:5000] + [-1] + big[5001:]  # differs only where a repr would be truncated
    assert bytecode_digest(over(big)) == bytecode_digest(over(list(big)))
    assert bytecode_digest(over(big)) != bytecode_digest(over(changed))


def test_mutually_recursive_functions_can_be_digested():
    namespace: dict = {}
    exec("def even(n):\n    return n == 0 or odd(n - 1)\ndef odd(n):\n    return n != 0 and even(n - 1)\n", namespace)
    assert len(bytecode_digest(namespace["even"])) == 64
    assert capture(namespace["even"]).kind == "pickle"


def test_code_document_round_trip():
    code = Code(kind="source", text="def f():\n    return 1\n", origin="/x/f.py", first_line=3)
    assert Code.from_dict(code.to_dict()) == code
    assert Code.from_dict({"kind": "source", "text": "x"}).first_line == 1
    with pytest.raises(CodeError, match="first_line"):
        Code.from_dict({"kind": "source", "text": "x", "first_line": 0})


def test_shipped_code_may_build_other_functions_while_it_loads(tmp_path):
    """A pipeline file that composes a function from another file at its top level (this deadlocked)."""
    write(tmp_path / "prep.py", "def prep(x):\n    return x + 1\n")
    write(
        tmp_path / "pipeline.py",
        "import os, shoal\n"
        "prep = shoal.Function.from_file(os.path.join(os.path.dirname(__file__), 'prep.py'), 'prep')\n\n"
        "def pipeline(x):\n    return prep(x) * 10\n",
    )
    code = "import shoal\nprint('OUT', shoal.Function.from_file('pipeline.py', 'pipeline')(1))\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "OUT 20" in result.stdout


def test_bound_methods_keep_their_instance():
    class Model:
        def __init__(self, weight):
            self.weight = weight

        def predict(self, x):
            return x * self.weight

    fn = shoal.function("predict")(Model(3).predict)
    assert fn.code.kind == "pickle" and fn(2) == 6
    assert shoal.Function.from_dict(fn.to_dict())(2) == 6
    assert fn.hash != shoal.function("predict")(Model(4).predict).hash


def test_a_wrapped_function_ships_the_users_file(tmp_path, monkeypatch):
    write(
        tmp_path / "decorators_lib.py",
        "import functools\n\ndef logged(func):\n    @functools.wraps(func)\n"
        "    def wrapper(*args):\n        return ('logged', func(*args))\n    return wrapper\n",
    )
    write(
        tmp_path / "usermod.py",
        "import shoal\nfrom decorators_lib import logged\n\n@shoal.function\n@logged\ndef work(x):\n    return x * 2\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import usermod

        assert usermod.work.code.kind == "source" and usermod.work.code.origin == str(tmp_path / "usermod.py")
        rebuilt = shoal.Function.from_dict(usermod.work.to_dict())
        assert rebuilt(2) == usermod.work(2) == ("logged", 4)
    finally:
        sys.modules.pop("usermod", None)
        sys.modules.pop("decorators_lib", None)


# -- the script the driver runs travels by value ------------------------------------------------------

RUNNING_SCRIPT = textwrap.dedent(
    """\
    import pathlib, pickle, sys, threading
    import cloudpickle
    import shoal

    pathlib.Path("top.log").open("a").write("x")
    SCALE = 3
    LOCK = threading.Lock()


    class Scaler:
        def __init__(self, k):
            self.k = k

        def apply(self, x):
            return x * self.k


    def helper(x):
        return Scaler(SCALE).apply(x)


    @shoal.function(cpu="500m")
    def handler(x: int):
        return helper(x) if x < 100 else handler(x - 100)  # itself, through the decorated name


    @shoal.function
    def locked(x: int):
        with LOCK:
            return x


    same = shoal.Function.from_file(__file__, "handler", name="same")  # the script is not run again
    print("HASHES", handler.hash, same.hash, handler.code.kind, same.code.kind)
    print("FINGERPRINT", handler.code.fingerprint)
    print("DOCUMENT", sorted(handler.to_dict()["code"]))
    pathlib.Path(sys.argv[1], "code.pickle").write_bytes(pickle.dumps(handler.code))
    pathlib.Path(sys.argv[1], "same.pickle").write_bytes(pickle.dumps(same.code))
    pathlib.Path(sys.argv[1], "function.pickle").write_bytes(cloudpickle.dumps(handler))
    print("LOCKED", locked.code.shipped_value())
    """
)

WORKER = (
    "import pickle, sys, cloudpickle\n"
    "from shoal.code import load_handler\n"
    "folder = sys.argv[1]\n"
    "code = pickle.load(open(folder + '/code.pickle', 'rb'))\n"
    "same = pickle.load(open(folder + '/same.pickle', 'rb'))\n"
    "fn = cloudpickle.load(open(folder + '/function.pickle', 'rb'))\n"
    "print('CALLS', load_handler(code, 'handler')(2), load_handler(code, 'handler')(102), "
    "load_handler(same, 'handler')(4), fn(5), fn.hash)\n"
)


def test_the_running_scripts_handler_ships_by_value_and_hashes_its_source(tmp_path):
    """As Ray ships ``__main__`` functions: the worker gets the handler (its helpers, classes and
    globals) by value and never runs the script; the hash and the stored document stay the source's."""
    driver, worker = tmp_path / "driver", tmp_path / "worker"
    driver.mkdir()
    worker.mkdir()
    script = write(driver / "script.py", RUNNING_SCRIPT)
    result = subprocess.run(
        [sys.executable, "script.py", str(tmp_path)], cwd=driver, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    handler_hash, same_hash, *kinds = lines_with("HASHES ", out)[0].split()
    assert handler_hash == same_hash and kinds == ["source", "source"]
    assert lines_with("FINGERPRINT ", out)[0] == shoal.code.source_from_file(script, "handler").fingerprint
    assert lines_with("DOCUMENT ", out)[0] == "['kind', 'origin', 'text']"  # nothing by value is stored
    assert (driver / "top.log").read_text() == "x"  # from_file took the script's handler, did not run it
    # a handler that cannot be pickled ships its file's text (with a warning saying what that means)
    assert lines_with("LOCKED ", out)[0] == "None" and "cannot ship" in result.stderr
    calls = python(["-c", WORKER, str(tmp_path)], worker)
    assert lines_with("CALLS ", calls)[0].split() == ["6", "6", "12", "15", handler_hash]
    assert not (worker / "top.log").exists(), "the worker ran the script's top level"


STARTS_RUNS = textwrap.dedent(
    """\
    import shoal


    def before(x):
        return x + 1


    shoal.function(before).map([{"x": 1}, {"x": 2}])


    def after(x):
        return x
    """
)


def test_a_file_that_starts_runs_at_its_top_level_stops_loading_there(tmp_path, monkeypatch, caplog):
    """Loading a function's file (on a worker, or here by from_file) never starts runs: the load
    stops at the call, says where, and keeps what the file defined above it."""
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "starts_runs.py", STARTS_RUNS)
    with caplog.at_level("WARNING", logger="shoal.code"):
        fn = shoal.Function.from_file(path, "before")
    assert fn(1) == 2
    assert f"stopped loading {path} at line 8" in caplog.text and "__main__" in caplog.text
    with pytest.raises(CodeError, match=r"handler 'after' not found .* line 8 \(shoal.function\(before\).map"):
        shoal.Function.from_file(path, "after")
    assert not (tmp_path / ".shoal").exists(), "nothing was recorded"


def test_a_file_the_driver_loaded_ships_by_value_and_never_runs_on_workers(tmp_path):
    """``Function.from_file`` (and ``shoal run FILE:HANDLER``) runs the file once, in the driver;
    workers get what it defined by value. The hash is the text's, as for any file."""
    driver, worker = tmp_path / "driver", tmp_path / "worker"
    driver.mkdir()
    worker.mkdir()
    write(driver / "job.py", "import pathlib\npathlib.Path('top.log').open('a').write('x')\nK = 2\n\ndef f(x):\n    return x * K\n")
    out = python(
        ["-c", "import pickle, shoal\nfn = shoal.Function.from_file('job.py', 'f')\n"
         "open('../code.pickle', 'wb').write(pickle.dumps(fn.code))\nprint('HASH', fn.hash)\n"],
        driver,
    )  # fmt: skip
    assert lines_with("HASH ", out)[0] == shoal.Function.from_dict(
        {"name": "f", "handler": "f", "code": shoal.code.source_from_file(driver / "job.py", "f").to_dict()}
    ).hash
    calls = python(
        ["-c", "import pickle\nfrom shoal.code import load_handler\n"
         "print('CALL', load_handler(pickle.load(open('../code.pickle', 'rb')), 'f')(21))\n"],
        worker,
    )  # fmt: skip
    assert lines_with("CALL ", calls)[0] == "42"
    assert (driver / "top.log").read_text() == "x" and not (worker / "top.log").exists()


def test_a_worker_running_such_a_file_starts_no_runs_either(tmp_path, monkeypatch):
    """A worker given the file's text (a function rebuilt from the store) stops there too: the run
    completes, its log says where loading stopped, and no nested run was recorded."""
    from shoal.execution import execute

    monkeypatch.chdir(tmp_path)
    text = STARTS_RUNS.replace("def before(", "def before_on_worker(").replace("(before)", "(before_on_worker)")
    code = shoal.code.source_from_file(write(tmp_path / "worker_file.py", text), "before_on_worker")
    fn = shoal.Function.from_dict({"name": "w", "handler": "before_on_worker", "code": code.to_dict()})
    from helpers import task

    outcome = execute(task(fn, {"x": 41}, artifacts=tmp_path / "artifacts"))
    assert outcome.state == "completed" and outcome.results == {"return": 42}, outcome.error
    assert "stopped loading" in outcome.logs and "line 8" in outcome.logs
    assert not (tmp_path / ".shoal").exists(), "nothing was recorded"

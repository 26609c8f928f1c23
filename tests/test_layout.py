"""The repository's layout (README "Layout"), read from the source with the ast module (no module
is imported, so this runs in well under a second):
  (a) no pipeline script imports another script;
  (b) imports point down the layers: model.py, sml/common.py and sml/hub.py at the bottom, then
      data/, then the rest of sml/, then the scripts, then tools/ (which may import a script:
      bench measures train_ppo's pieces with train_ppo's own code); so nothing in sml/, data/ or
      model.py imports a script or tools/;
  (c) no import cycle between the repository's modules (module- and function-level imports);
  (d) the stage files: no function over 80 lines, none with more than 10 parameters;
  (e) the top level holds only the pipeline's scripts (and model.py).
tests/ sits on top and may import anything; it is not read here."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"generate", "train_sft", "train_rm", "train_ppo", "pretrain", "evaluate"}
TOP_LEVEL = {"model.py"} | {f"{s}.py" for s in SCRIPTS}
STAGE_FILES = ["generate.py", "train_sft.py", "train_rm.py", "train_ppo.py"]
MAX_LINES, MAX_PARAMS = 80, 10
BOTTOM = {"model", "sml", "sml.common", "sml.hub"}


def layer(module):
    """A module's layer; an import may only point at the same layer or a lower one."""
    if module in BOTTOM:
        return 0, "bottom layer"
    top = module.split(".")[0]
    if top == "data":
        return 1, "data/"
    if top == "sml":
        return 2, "sml/ above data/"
    if module in SCRIPTS:
        return 3, "a script"
    if top == "tools":
        return 4, "tools/"  # above the scripts, like tests/: a tool may import a script
    raise AssertionError(f"{module}: no layer in tests/test_layout.py (a new top-level module or folder?)")


def repo_modules():
    """{dotted module name: path} of every .py outside .venv, tests/ and hidden folders."""
    modules = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("tests", "__pycache__"))
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def imports_of(module, path, modules):
    """[(imported repo module, line)] of every import statement in the file, at any depth
    (a function-level import is as much a dependency as a module-level one). Importing data.jsonl
    from outside data/ runs data/__init__.py first: that is an import of data too."""

    def resolve(name):  # the longest prefix of a dotted name that is a repo module, and its packages
        parts = name.split(".")
        found = [".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules]
        return found[:1] + [p for p in found[1:] if not (module + ".").startswith(p + ".")]

    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            found += [(m, node.lineno) for a in node.names for m in resolve(a.name)]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..y import z
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in up + [base] if p)
            for a in node.names:  # `from sml import hub` imports the module sml.hub
                found += [(m, node.lineno) for m in resolve(f"{base}.{a.name}" if base else a.name)]
    first = {}
    for m, line in found:
        if m != module:
            first.setdefault(m, line)
    return sorted(first.items())


@pytest.fixture(scope="module")
def graph():
    modules = repo_modules()
    return modules, {m: imports_of(m, p, modules) for m, p in modules.items()}


def where(modules, module, line):
    return f"{os.path.relpath(modules[module], ROOT)}:{line}"


def test_no_script_imports_a_script(graph):  # (a)
    modules, edges = graph
    bad = [f"{where(modules, m, line)}: the script {m} imports the script {to}"
           for m in sorted(SCRIPTS & set(modules)) for to, line in edges[m] if to in SCRIPTS]
    assert not bad, "a script imports a script (move what they share into sml/):\n" + "\n".join(bad)


def test_imports_point_down(graph):  # (b)
    modules, edges = graph
    bad = []
    for m in sorted(modules):
        for to, line in edges[m]:
            (here, here_name), (there, there_name) = layer(m), layer(to)
            if there > here:
                bad.append(f"{where(modules, m, line)}: {m} ({here_name}) imports {to} ({there_name})")
    assert not bad, "an import points upward:\n" + "\n".join(bad)


def test_no_import_cycle(graph):  # (c)
    modules, edges = graph
    done, path, cycles = set(), [], []

    def visit(m):
        path.append(m)
        for to, _ in edges[m]:
            if to in path:
                cycles.append(path[path.index(to):] + [to])
            elif to not in done:
                visit(to)
        path.pop()
        done.add(m)

    for m in sorted(modules):
        if m not in done:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def oversized(name):
    """The functions of a stage file (methods and nested ones too) over MAX_LINES lines (the def
    line to the last line of the body) or with more than MAX_PARAMS parameters (every named
    one, self included; *args and **kwargs count as one each)."""
    path = os.path.join(ROOT, name)
    bad = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            params = len(a.posonlyargs + a.args + a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES:
                bad.append(f"{name}:{node.lineno}: {node.name} is {lines} lines (at most {MAX_LINES})")
            if params > MAX_PARAMS:
                bad.append(f"{name}:{node.lineno}: {node.name} takes {params} parameters (at most {MAX_PARAMS})")
    return bad


@pytest.mark.parametrize("name", STAGE_FILES)
def test_stage_functions_are_small(name):  # (d)
    bad = oversized(name)
    assert not bad, "\n".join(bad)


def test_top_level_holds_the_pipeline():  # (e)
    found = {f for f in os.listdir(ROOT) if f.endswith(".py")}
    assert found == TOP_LEVEL, (f"top-level .py files: {sorted(found - TOP_LEVEL)} should not be here "
                                f"(support code goes in sml/, tools in tools/); missing: {sorted(TOP_LEVEL - found)}")


def line_count(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return sum(1 for _ in f)


def test_the_stage_files_fit_their_bounds():  # issue 33: the method stays readable in a few pages
    counts = {name: line_count(name) for name in STAGE_FILES}
    assert counts["train_ppo.py"] <= 650, f"train_ppo.py has {counts['train_ppo.py']} lines (at most 650)"
    assert sum(counts.values()) <= 1300, f"the four stage files have {sum(counts.values())} lines (at most 1,300): {counts}"


@pytest.mark.parametrize("name", sorted(TOP_LEVEL) + ["data/prepare.py", "tools/bench.py", "tools/results.py"])
def test_a_script_docstring_is_a_page(name):  # --help fits a screen; the essays live in docs/
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read()), clean=False) or ""
    assert len(doc.splitlines()) <= 25, f"{name}: its docstring has {len(doc.splitlines())} lines (at most 25)"

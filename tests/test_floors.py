"""The package's shape, enforced (issue #23; the floors are drawn in docs/ARCHITECTURE.md, "Floors").

Every module of ``ssmkit/`` is parsed with ``ast`` (nothing is imported) and checked for:

1. **Floors**: a module imports only modules of a lower floor or of its own room. Rooms on one floor do not import
   each other (models and tasks; train and generation). Nothing inside the package imports the top-level
   ``ssmkit`` facade (``ssmkit/__init__.py``), which re-exports the public API and sits above everything.
2. **No import circle** among the modules (module-level imports, an edge per imported ``ssmkit`` module; a
   package's ``__init__`` counts as a module).
3. **No hidden imports**: no ``import`` inside a function or method, except of an optional third-party package
   (``OPTIONAL`` below: installed only with an extra, so importing it at module level would break the others)
   and of the few heavy modules listed in ``LAZY`` with the reason each must stay lazy.
4. **No giant functions**: a function or method spans at most ``MAX_LINES`` lines from its ``def`` to its last
   line, docstring and nested functions included (decorators not counted).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ssmkit"
MAX_LINES = 80

#: room -> floor; a room is a top-level module or package of ssmkit (see ``room_of``).
FLOORS = {
    "utils": 0,
    "ops": 1,
    "mixers": 2,
    "models": 3, "tasks": 3,
    "recipe": 4,
    "runs": 5,
    "train": 6, "generation": 6,
    "cli": 7,
    "facade": 8,
}
#: top-level modules of floor 0 and of the CLI floor (everything else is named by its package or module).
UTILS = {"errors", "registry", "console", "openmp", "contention", "_version"}
#: ``doctor``, ``profile`` and ``sweep`` are the library halves of their commands (``ssmkit/cli/``): they
#: start subprocesses of ``ssmkit`` or time every mixer, so they sit on the CLI floor, beside it.
CLI = {"cli", "doctor", "profile", "sweep", "__main__"}

#: third-party packages that only an extra installs (pyproject's optional-dependencies) or that are optional
#: accelerations: importing one at module level would make the package need it.
OPTIONAL = {"torchvision", "torchaudio", "soundfile", "torchcodec", "PIL", "pykeops", "matplotlib", "tensorboard",
            "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive", "datasets", "pyarrow", "tokenizers",
            "sklearn", "statsmodels", "huggingface_hub", "mamba_ssm", "causal_conv1d", "triton", "ssmkit_cauchy", "tensorboardX"}
#: modules a function may import lazily, each for a reason a reader would accept.
LAZY = {
    # importing it imports setuptools and distutils (~0.5 s): only the extension build needs it.
    "torch.utils.cpp_extension",
    # ~0.7 s on an idle core, a fifth of `ssmkit --help`; only FSDP runs (GPUs) use it (ssmkit/train/loop.py).
    "torch.distributed.fsdp",
}


def modules() -> dict[str, Path]:
    """Dotted name -> file for every module of the package."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def room_of(name: str) -> str:
    """The room (a key of FLOORS) a dotted ssmkit module name belongs to."""
    parts = name.split(".")
    if len(parts) == 1:
        return "facade"
    head = parts[1]
    if head in UTILS:
        return "utils"
    if head in CLI:
        return "cli"
    return head


def resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The ssmkit modules an import statement loads (the deepest existing module of each name)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = importer.split(".")
            if not MODULES[importer].name == "__init__.py":
                pkg = pkg[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = []
    for n in names:
        if not n.startswith("ssmkit"):
            continue
        while n not in MODULES and "." in n:
            n = n.rsplit(".", 1)[0]
        out.append(n)
    return out


def walk(tree: ast.AST):
    """(node, inside_function, under_type_checking) for every import node of a module."""
    stack = [(tree, False, False)]
    while stack:
        node, in_fn, tc = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_fn, tc
        for child in ast.iter_child_nodes(node):
            child_fn = in_fn or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            child_tc = tc or (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))
            stack.append((child, child_fn, child_tc))


TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def where(name: str, node: ast.AST) -> str:
    return f"{MODULES[name].relative_to(ROOT)}:{node.lineno}"


def test_floors():
    bad = []
    for name, tree in TREES.items():
        mine = room_of(name)
        for node, _, tc in walk(tree):
            if tc:
                continue
            for target in resolve(name, node):
                theirs = room_of(target)
                if theirs == mine:
                    continue
                if FLOORS[theirs] >= FLOORS[mine]:
                    bad.append(f"{where(name, node)}: {mine} (floor {FLOORS[mine]}) imports {target} "
                               f"({theirs}, floor {FLOORS[theirs]})")
    assert not bad, "imports that go up or sideways:\n" + "\n".join(sorted(bad))


def import_graph() -> dict[str, set[str]]:
    graph = {name: set() for name in MODULES}
    for name, tree in TREES.items():
        for node, in_fn, tc in walk(tree):
            if in_fn or tc:
                continue
            for target in resolve(name, node):
                if target != name:
                    graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_circle():
    cycles = strongly_connected(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_strongly_connected_finds_a_circle():
    """The cycle finder itself: a planted circle is found, a chain is not."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_inside_functions():
    bad = []
    for name, tree in TREES.items():
        for node, in_fn, _ in walk(tree):
            if not in_fn:
                continue
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                mods = [node.module or "."] if not node.level else ["."]
            for mod in mods:
                if mod.split(".")[0] in OPTIONAL or mod in LAZY:
                    continue
                bad.append(f"{where(name, node)}: import of {mod} inside a function")
    assert not bad, "imports hidden in functions (move them to the top of the module):\n" + "\n".join(sorted(bad))


def test_no_giant_function():
    bad = []
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    bad.append(f"{where(name, node)}: {node.name} is {n} lines (at most {MAX_LINES})")
    assert not bad, "functions to split:\n" + "\n".join(sorted(bad))


def test_every_module_has_a_floor():
    """A new top-level module must be placed in FLOORS, UTILS or CLI before it can be checked."""
    unknown = sorted({room_of(m) for m in MODULES} - set(FLOORS))
    assert not unknown, f"modules in no floor (add them to FLOORS, UTILS or CLI): {unknown}"
    assert room_of("ssmkit.ops.scan") == "ops" and room_of("ssmkit.errors") == "utils"
    assert room_of("ssmkit") == "facade" and room_of("ssmkit.cli.runs") == "cli"

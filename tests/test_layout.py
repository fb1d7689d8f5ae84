"""The shape of the package: imports flow one way (no circle), none hide inside functions, modules stay small."""

import ast
from pathlib import Path

import unmask
from unmask.kinds import KINDS

PACKAGE = Path(unmask.__file__).parent
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], list[str]]:
    """(unmask modules imported at module level outside TYPE_CHECKING, unmask imports inside functions)."""
    tree = ast.parse(path.read_text())
    top, nested = set(), []

    def targets(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, node, path.name == "__init__.py")
            # "from package import submodule" needs the submodule; any other name needs the package's __init__.
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            return submodules if len(submodules) == len(node.names) else [base, *submodules]
        return []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            names = [n for n in targets(child) if n == "unmask" or n.startswith("unmask.")]
            if names and in_function:
                nested.extend(f"{module}:{child.lineno} imports {n}" for n in names)
            elif names:
                top.update(n for n in names if n in modules)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, nested


def _graph():
    modules = _modules()
    graph, nested = {}, []
    for name, path in modules.items():
        edges, inner = _imports(name, path, modules)
        graph[name] = edges - {name}
        nested += inner
    return graph, nested


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle():
    graph, _ = _graph()
    assert len(graph) > 40
    assert _cycles(graph) == []
    # Floors: the bottom knows nothing above it; models sit below checkpoints, checkpoints below training.
    for low, high in [("unmask.runtime", "unmask.models"), ("unmask.models.dit", "unmask.checkpoint"),
                      ("unmask.checkpoint.checkpointer", "unmask.train"), ("unmask.sampling.loop", "unmask.models"),
                      ("unmask.bounds", "unmask.models"), ("unmask.sampling.run", "unmask.models")]:
        assert not _reaches(graph, low, high), f"{low} imports {high}"


def _reaches(graph: dict[str, set[str]], start: str, target: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        if v == target or v.startswith(target + "."):
            return True
        if v not in seen:
            seen.add(v)
            todo.extend(graph.get(v, ()))
    return False


def test_a_planted_circle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_unmask_import_inside_a_function():
    _, nested = _graph()
    assert nested == []


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def _kind_comparisons(source: str, where: str = "") -> list[str]:
    """Every comparison with a model kind's name written as a string (``x == "ar"``, ``name in ("mdlm", "d3pm")``)."""
    names = set(KINDS)
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        literals = [elt for operand in operands
                    for elt in (operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand])]
        found += [f"{where}:{node.lineno} compares {elt.value!r}" for elt in literals
                  if isinstance(elt, ast.Constant) and elt.value in names]
    return found


def test_only_the_kinds_compare_kind_names():
    outside = {name: path for name, path in _modules().items() if not name.startswith("unmask.kinds")}
    found = [hit for name, path in outside.items() for hit in _kind_comparisons(path.read_text(), name)]
    assert found == []


def test_a_planted_kind_comparison_is_found():
    planted = 'if config.objective.name == "sedd" or kind in ("mdlm", "other") or "ar" != x: pass'
    assert len(_kind_comparisons(planted)) == 3
    assert _kind_comparisons('if model_type == BD3LM_TYPE or name == "sedd-like": pass') == []

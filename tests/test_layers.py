"""The package's layers (README, Layout): every module sits in one layer and imports only from its own layer or
lower ones, the imports between modules form no cycle, and no function imports an rcg module (imports at the
top of a module only), except the optional heavy extras named in OPTIONAL. An AST check of src/rcg."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "rcg"

# module (dotted, below rcg) or package prefix ("stages." = every module in rcg/stages/) -> layer
LAYERS = {
    # 0 base: no model knowledge
    "__init__": 0, "dist": 0, "rng": 0, "tree": 0, "store": 0, "layers": 0, "precision": 0, "compiling": 0,
    # 1 networks and processes: pure modules and functions
    "encoders": 1, "ssl": 1, "rdm": 1, "tokenizer": 1, "pixel": 1, "pixel.": 1, "diffusion": 1, "solvers": 1, "guidance": 1,
    "augment": 1, "data": 1, "prepared": 1, "images": 1, "inception": 1, "evalnet": 1,
    # 2 configs and presets
    "config": 2, "presets": 2,
    # 3 machinery: training loop, official formats, loaders, sampling, evaluation
    "train": 3, "optim": 3, "feed": 3, "watch": 3, "official": 3, "official.": 3, "loaders": 3, "sample": 3, "pipeline": 3, "paper": 3, "evaluate": 3, "evaluate.": 3,
    # 4 the functions behind the verbs
    "stages": 4, "stages.": 4,
    # 5 front ends
    "cli": 5, "__main__": 5, "serve": 5, "serve.": 5,
}
NAMES = {0: "base", 1: "networks", 2: "configs", 3: "machinery", 4: "stages", 5: "front ends"}
OPTIONAL = set()          # rcg modules that may be imported inside a function (optional heavy extras)


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(name: str):
    if name in LAYERS:
        return LAYERS[name]
    for key, layer in LAYERS.items():
        if key.endswith(".") and name.startswith(key):
            return layer
    return None


def _resolve(node, current: str, is_package: bool, known: set) -> list:
    """rcg modules (dotted below rcg) named by one import statement."""
    out = []
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name == "rcg" or a.name.startswith("rcg."):
                out.append(a.name[4:] or "__init__")
        return out
    if node.level == 0:
        if not (node.module == "rcg" or (node.module or "").startswith("rcg.")):
            return out
        base = node.module[4:]
    else:
        pkg = current.split(".") if is_package else current.split(".")[:-1]
        if current == "__init__":
            pkg = []
        pkg = pkg[:len(pkg) - (node.level - 1)] if node.level > 1 else pkg
        base = ".".join(pkg + ([node.module] if node.module else []))
    for a in node.names:
        sub = f"{base}.{a.name}" if base else a.name
        out.append(sub if sub in known else (base or "__init__"))
    return out


def scan(root: Path):
    """(module -> layer, edges [(importer, imported, lineno, top_level)])."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    edges = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        top = {id(n) for n in tree.body}
        for cls in (n for n in tree.body if isinstance(n, (ast.If, ast.Try))):   # guarded top-level imports
            top |= {id(n) for n in ast.walk(cls)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(node, name, is_package, known):
                    if target != name:
                        edges.append((name, target, node.lineno, id(node) in top))
    return {n: layer_of(n) for n in files}, edges


def problems(root: Path) -> list:
    layers, edges = scan(root)
    out = [f"{m} sits in no layer: add it to LAYERS" for m, layer in layers.items() if layer is None]
    graph = {}
    for a, b, line, top in edges:
        la, lb = layers.get(a), layers.get(b)
        if b not in layers:
            out.append(f"{a}:{line} imports rcg.{b}, which does not exist")
            continue
        if la is not None and lb is not None and lb > la:
            out.append(f"{a}:{line} (layer {la}, {NAMES[la]}) imports {b} (layer {lb}, {NAMES[lb]}): upward")
        if not top and b not in OPTIONAL:
            out.append(f"{a}:{line} imports {b} inside a function or class")
        if top:
            graph.setdefault(a, set()).add(b)
    out += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return out


def cycles(graph: dict) -> list:
    """One cycle per strongly connected component of more than one module (iterative Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp) + [sorted(comp)[0]])
            elif nxt not in index:
                index[nxt] = low[nxt] = counter[0]
                counter[0] += 1
                stack.append(nxt)
                on.add(nxt)
                work.append((nxt, iter(sorted(graph.get(nxt, ())))))
            elif nxt in on:
                low[node] = min(low[node], index[nxt])

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_every_module_imports_only_downward_without_cycles():
    found = problems(SRC)
    assert not found, "layer violations:\n  " + "\n  ".join(found)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "rcg"
    for p in SRC.rglob("*.py"):
        dst = root / p.relative_to(SRC)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(p.read_text())
    return root


@pytest.mark.parametrize("plant, expect", [
    ("from .stages import fit\n", "upward"),                     # a network importing a stage
    ("from . import config\n", "upward"),                        # ... or a config
    ("def f():\n    from . import augment\n", "inside a function"),
])
def test_the_check_catches_a_planted_violation(tmp_path, plant, expect):
    root = _copy(tmp_path)
    target = root / "diffusion.py"
    target.write_text(target.read_text() + "\n" + plant)
    found = problems(root)
    assert any(expect in f and f.startswith("diffusion:") for f in found), found


def test_the_check_catches_a_cycle_and_an_unplaced_module(tmp_path):
    root = _copy(tmp_path)
    (root / "guidance.py").write_text((root / "guidance.py").read_text() + "\nfrom . import augment\n")
    (root / "augment.py").write_text((root / "augment.py").read_text() + "\nfrom . import guidance\n")
    (root / "stray.py").write_text("X = 1\n")
    found = problems(root)
    assert any(f.startswith("import cycle:") and "augment" in f and "guidance" in f for f in found), found
    assert any(f.startswith("stray sits in no layer") for f in found), found


def test_size_budgets():
    """No module over 450 lines, no function over 100 lines (DESIGN.md section 2)."""
    long_modules, long_functions = [], []
    for p in sorted(SRC.rglob("*.py")):
        text = p.read_text()
        n = len(text.splitlines())
        if n > 450:
            long_modules.append(f"{p.relative_to(SRC)}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 100:
                    long_functions.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name}: {length} lines")
    assert not long_modules and not long_functions, long_modules + long_functions

"""The package layout, read from the code with `ast` (nothing is imported): one folder per stage, no import cycles,
no module `__getattr__` shims, no private names imported across modules, the layers' import rules, settings as the
only readers of config sections, and one job per module stated in its first docstring line."""
import ast
import os
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "lasa_jax"
STAGES = ("locate", "ssi", "kto", "generate", "evaluate")
# the files one stage hands to the next: the only modules of a stage package another stage package may import
ARTIFACT_MODULES = {"lasa_jax.locate.report", "lasa_jax.ssi.artifact"}
SHARED_LAYERS = ("infra", "models", "data", "decoding")
TOP_LEVEL_LIMIT = 12


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _imports(name: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every lasa_jax import of a module, at any depth."""
    out = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("lasa_jax")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lasa_jax"):
            assert node.level == 0, f"{name}:{node.lineno}: relative import"
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((sub, "", node.lineno) if sub in MODULES else (node.module, a.name, node.lineno))
    return out


EDGES = {name: {target for target, _, _ in _imports(name) if target in MODULES and target != name}
         for name in MODULES}


def _area(module: str) -> str:
    """"locate", "infra", ... for a module inside a package folder of lasa_jax; "top" for top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and MODULES[module].name == "__init__.py") else "top"


def test_no_import_cycles():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in EDGES[v]:
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
                cycles.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_module_getattr_and_no_private_imports_across_modules():
    shims = [name for name, tree in TREES.items()
             if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)]
    private = [f"{name}:{line} imports {target}.{imported}" for name in MODULES
               for target, imported, line in _imports(name)
               if imported.startswith("_") and not imported.startswith("__")]
    assert shims == [] and private == []


def test_top_level_holds_at_most_a_dozen_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= TOP_LEVEL_LIMIT, top


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_is_a_folder_with_its_contract_and_settings(stage):
    assert (PACKAGE / stage / "stage.py").is_file() and (PACKAGE / stage / "settings.py").is_file()
    body = TREES[f"lasa_jax.{stage}.stage"].body
    names = ({n.name for n in body if isinstance(n, ast.FunctionDef)} |
             {a.asname or a.name for n in body if isinstance(n, ast.ImportFrom) for a in n.names})
    assert {"settings", "run", "report_lines"} <= names
    assigned = {t.id for n in TREES[f"lasa_jax.{stage}.stage"].body if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name)}
    assert "NAME" in assigned


def test_pipeline_rows_name_the_stage_modules():
    rows = [n for n in ast.walk(TREES["lasa_jax.pipeline"])
            if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "StageRow"]
    modules = {n.args[1].value for n in rows}
    assert modules == {f"lasa_jax.{stage}.stage" for stage in STAGES}


def test_layers_import_only_downwards():
    """infra imports nothing else of lasa_jax; models, data and decoding import no stage package and nothing of the
    top level but the shared foundations; a stage package imports another stage only through its artifact module."""
    foundations = {"lasa_jax.sharding", "lasa_jax.statistics", "lasa_jax.stage"}
    bad = []
    for name in MODULES:
        area = _area(name)
        for target in EDGES[name]:
            target_area = _area(target)
            if area == "infra" and target_area != "infra":
                bad.append(f"{name} -> {target}")
            elif area in SHARED_LAYERS and (target_area in STAGES or (target_area == "top" and
                                                                      target not in foundations)):
                bad.append(f"{name} -> {target}")
            elif area in STAGES and target_area in STAGES and target_area != area and target not in ARTIFACT_MODULES:
                bad.append(f"{name} -> {target}")
    assert bad == []


def test_only_settings_modules_read_config_sections():
    """Inside a stage package only settings.py handles ml_collections (the config); the rest takes settings."""
    readers = [name for name in MODULES if _area(name) in STAGES and not name.endswith(".settings")
               and any(isinstance(n, (ast.Import, ast.ImportFrom)) and
                       any("ml_collections" in (getattr(n, "module", None) or a.name) for a in n.names)
                       for n in ast.walk(TREES[name]))]
    assert readers == []


def test_every_module_states_its_job_in_its_first_docstring_line():
    missing = [name for name, tree in TREES.items()
               if not (ast.get_docstring(tree) or "").strip() and os.path.getsize(MODULES[name]) > 0]
    assert missing == []

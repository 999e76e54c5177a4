"""The layers of ``lumix_core`` and the pack's thin ``nodes/``, read from the import statements.

Nothing is imported: every ``.py`` file is parsed with ``ast`` and its import statements
(module level and inside functions alike) are resolved to absolute module names.

A *unit* of ``lumix_core`` is a sub-package (``lumix_core.model``, ``lumix_core.train`` ...)
or a module directly in ``lumix_core/`` (``lumix_core.maps``, ``lumix_core.cli`` ...). Each
unit says in its own docstring -- the sub-package's ``__init__``, or the module's -- which
other units it may import, in one ``May import:`` paragraph; that line is the rule, stated
once, and this test holds every module of the unit to it. On top of the declared lines the
design's fixed facts are checked (:data:`NEVER`): e.g. the model maths never reaches the
world, training or the toy, and finishing never reaches training, not even through another
unit. The declared layers must form no cycle, and neither may the imports actually made --
between modules too, counting the imports inside functions: such an import cannot fail at
import time, but a circle through it still ties its modules together.

ComfyUI: nothing in ``lumix_core`` imports ``comfy`` when it is imported. The one deliberate
exception is :mod:`lumix_core.train.comfy_host`, which runs a ComfyUI checkout's own VAE and
text encoders headless for ``lumix-train prepare``: it imports ``comfy`` only inside its
functions, from the checkout the user names, so ``import lumix_core.train`` (and every other
module) works without ComfyUI. The exception is allowed for that module alone, and only
inside functions.

``nodes/`` are the pack's thin adapters: they import the pack's own modules relatively
(``from ..lumix_core.X import``, ``from ._host import``), ComfyUI's modules, the standard
library and torch, nothing else -- never ``lumix_core`` absolutely (the pack must use its own
copy), never a top-level ``nodes`` (that name is ComfyUI's own module), and never the
trainer, the toy, the synthetic world or the ``lumix`` command.

The checkers are plain functions over ``{module: source}``; the last tests feed them small
in-memory sources with a violation each, to show that they fail when they should.
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

ROOT = Path(__file__).resolve().parents[1]
CORE = "lumix_core"

#: Top-level modules of a ComfyUI installation.
HOST_MODULES = frozenset({"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths",
                          "latent_preview", "node_helpers", "server", "execution"})
#: The one lumix_core module that may import ComfyUI, and only inside its functions.
COMFY_IMPORTER = "lumix_core.train.comfy_host"

#: Fixed by the design, whatever the docstrings declare: unit -> units it must never reach,
#: directly or through any unit it may import.
NEVER: dict[str, frozenset[str]] = {
    "lumix_core.maps": frozenset({"lumix_core.conventions", "lumix_core.latents", "lumix_core.io", "lumix_core.finish",
                                  "lumix_core.model", "lumix_core.sampling", "lumix_core.world", "lumix_core.train",
                                  "lumix_core.toy", "lumix_core.cli"}),
    "lumix_core.latents": frozenset({"lumix_core.model", "lumix_core.sampling", "lumix_core.world", "lumix_core.train",
                                     "lumix_core.toy", "lumix_core.cli"}),
    "lumix_core.model": frozenset({"lumix_core.sampling", "lumix_core.finish", "lumix_core.world", "lumix_core.train",
                                   "lumix_core.toy", "lumix_core.cli"}),
    "lumix_core.io": frozenset({"lumix_core.model", "lumix_core.sampling", "lumix_core.world", "lumix_core.train",
                                "lumix_core.toy", "lumix_core.cli"}),
    "lumix_core.finish": frozenset({"lumix_core.model", "lumix_core.sampling", "lumix_core.world", "lumix_core.train",
                                    "lumix_core.toy", "lumix_core.cli"}),
    "lumix_core.sampling": frozenset({"lumix_core.world", "lumix_core.train", "lumix_core.toy", "lumix_core.cli"}),
    "lumix_core.world": frozenset({"lumix_core.model", "lumix_core.train", "lumix_core.toy", "lumix_core.cli"}),
    "lumix_core.train": frozenset({"lumix_core.world", "lumix_core.toy", "lumix_core.cli"}),
    "lumix_core.toy": frozenset({"lumix_core.cli"}),
    "lumix_core.shot": frozenset({"lumix_core.model", "lumix_core.sampling", "lumix_core.world", "lumix_core.train",
                                  "lumix_core.toy", "lumix_core.cli"}),
}

#: Units of lumix_core that nodes/ never import.
NODES_NEVER = frozenset({"lumix_core.train", "lumix_core.toy", "lumix_core.world", "lumix_core.cli"})
NODES_MAY_IMPORT_ABSOLUTE = frozenset({"torch"}) | HOST_MODULES


@dataclass(frozen=True)
class Source:
    """One Python file: its dotted module name, whether it is a package ``__init__``, its text."""
    module: str
    is_package: bool
    text: str
    path: str = ""


@dataclass(frozen=True)
class Import:
    source: str        # the importing module
    target: str        # absolute dotted name of what is imported (a module or package)
    line: int
    in_function: bool
    level: int         # 0 = absolute import

    @property
    def top(self) -> str:
        return self.target.split(".")[0]


def read_tree(folder: Path, package: str) -> dict[str, Source]:
    """Every ``.py`` file under ``folder`` (the package ``package``), keyed by module name."""
    out = {}
    for path in sorted(folder.rglob("*.py")):
        parts = (package, *path.relative_to(folder).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        out[module] = Source(module, is_package, path.read_text(), str(path.relative_to(ROOT)))
    return out


def imports_of(src: Source) -> list[Import]:
    """The import statements of one file, relative ones resolved against its package."""
    package = src.module if src.is_package else src.module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(src.module, a.name, child.lineno, in_function, 0) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = package.split(".")
                    if child.level - 1 > len(parts) - 1:
                        raise AssertionError(f"{src.path or src.module}:{child.lineno}: relative import "
                                             f"beyond the top-level package")
                    base = ".".join(parts[:len(parts) - (child.level - 1)])
                else:
                    base = ""
                if child.module:
                    target = f"{base}.{child.module}" if base else child.module
                    found.append(Import(src.module, target, child.lineno, in_function, child.level))
                else:  # from . import a, b: each name is a module of the package
                    found.extend(Import(src.module, f"{base}.{a.name}", child.lineno, in_function, child.level)
                                 for a in child.names)
            visit(child, inner)

    visit(ast.parse(src.text), False)
    return found


def unit_of(module: str) -> str:
    """``lumix_core.model.qba`` -> ``lumix_core.model``; ``lumix_core.maps`` -> itself."""
    return ".".join(module.split(".")[:2])


def subpackages(sources: Mapping[str, Source]) -> set[str]:
    return {m for m, s in sources.items() if s.is_package and m.count(".") == 1}


_RULE = re.compile(r"^May import:(.*?)(?:\n\s*\n|\Z)", re.S | re.M)


def declared_rules(sources: Mapping[str, Source]) -> tuple[dict[str, frozenset[str]], list[str]]:
    """Unit -> the units its docstring says it may import; plus the problems found reading them."""
    units = {unit_of(m) for m in sources}
    rules: dict[str, frozenset[str]] = {}
    problems = []
    for unit in sorted(units):
        src = sources.get(unit)
        doc = ast.get_docstring(ast.parse(src.text)) if src else None
        found = _RULE.findall(doc or "")
        where = (src.path or unit) if src else unit
        if len(found) != 1:
            problems.append(f"{where}: the docstring needs exactly one 'May import:' paragraph (found {len(found)})")
            continue
        text = " ".join(found[0].split()).rstrip(".")
        if text == f"nothing from {CORE}":
            rules[unit] = frozenset()
            continue
        names = [n.strip() for n in text.split(",")]
        unknown = [n for n in names if n not in units or n == unit]
        if unknown:
            problems.append(f"{where}: 'May import:' names {unknown}, which are not other units of {CORE}")
        rules[unit] = frozenset(n for n in names if n in units and n != unit)
    return rules, problems


def layer_violations(sources: Mapping[str, Source]) -> list[str]:
    """Every import of a lumix_core module that its unit's declared rule does not allow, every
    ComfyUI import outside the one exception, and every rule that breaks :data:`NEVER`."""
    rules, problems = declared_rules(sources)
    for unit, never in NEVER.items():
        reached = reachable(rules, unit) & never
        if unit in rules and reached:
            problems.append(f"{unit} may reach {sorted(reached)} through its 'May import:' chain; "
                            f"the design forbids it")
    for src in sources.values():
        unit = unit_of(src.module)
        for imp in imports_of(src):
            where = f"{src.path or src.module}:{imp.line}"
            if imp.top in HOST_MODULES:
                if src.module != COMFY_IMPORTER:
                    problems.append(f"{where}: imports {imp.target}; {CORE} never imports ComfyUI "
                                    f"(only {COMFY_IMPORTER} may, inside its functions)")
                elif not imp.in_function:
                    problems.append(f"{where}: imports {imp.target} at module level; {COMFY_IMPORTER} may "
                                    f"import ComfyUI only inside its functions")
                continue
            if imp.top != CORE:
                continue
            if imp.level == 0:
                problems.append(f"{where}: imports {imp.target} absolutely; inside {CORE} imports are relative")
            target_unit = unit_of(imp.target)
            if target_unit == unit or unit not in rules:
                continue
            if target_unit not in rules[unit]:
                allowed = ", ".join(sorted(rules[unit])) or "nothing"
                problems.append(f"{where}: imports {imp.target}; {unit} may import only {allowed}")
    return problems


def reachable(edges: Mapping[str, Iterable[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(edges.get(start, ()))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(edges.get(n, ()))
    return seen


def find_cycle(edges: Mapping[str, Iterable[str]]) -> Optional[list[str]]:
    """One cycle of the directed graph ``edges`` (as a closed path), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> Optional[list[str]]:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                cycle = dfs(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            cycle = dfs(n)
            if cycle:
                return cycle
    return None


def unit_graph(sources: Mapping[str, Source]) -> dict[str, set[str]]:
    """The imports actually made between units of lumix_core."""
    edges: dict[str, set[str]] = {}
    for src in sources.values():
        unit = unit_of(src.module)
        for imp in imports_of(src):
            if imp.top == CORE and unit_of(imp.target) != unit:
                edges.setdefault(unit, set()).add(unit_of(imp.target))
    return edges


def module_graph(sources: Mapping[str, Source], inside_functions: bool = False) -> dict[str, set[str]]:
    """Imports between the modules of ``sources``: module-level ones, and with ``inside_functions``
    also those inside functions (which run late, so they cannot fail at import time)."""
    edges: dict[str, set[str]] = {}
    for src in sources.values():
        for imp in imports_of(src):
            if (inside_functions or not imp.in_function) and imp.target in sources and imp.target != src.module:
                edges.setdefault(src.module, set()).add(imp.target)
    return edges


def node_violations(sources: Mapping[str, Source], pack: str) -> list[str]:
    """Imports of the pack's ComfyUI side (root ``__init__`` + ``nodes/``) that are not thin."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    problems = []
    for src in sources.values():
        for imp in imports_of(src):
            where = f"{src.path or src.module}:{imp.line}"
            if imp.level:
                inside = imp.target[len(pack) + 1:] if imp.target.startswith(pack + ".") else ""
                first = inside.split(".")[0]
                if first == "nodes":
                    continue
                if first != CORE:
                    problems.append(f"{where}: imports {imp.target}; the pack's nodes import only its own "
                                    f"nodes/ and lumix_core")
                elif unit_of(inside) in NODES_NEVER:
                    problems.append(f"{where}: imports {inside}; nodes are thin adapters and never import "
                                    f"{', '.join(sorted(NODES_NEVER))}")
            elif imp.top == CORE:
                problems.append(f"{where}: imports {imp.target} absolutely; the pack imports its own copy "
                                f"relatively (from ..lumix_core.X import ...)")
            elif imp.top == "nodes":
                problems.append(f"{where}: imports a top-level 'nodes' (ComfyUI's module); the pack's nodes/ "
                                f"is imported relatively")
            elif imp.top not in stdlib and imp.top not in NODES_MAY_IMPORT_ABSOLUTE:
                problems.append(f"{where}: imports {imp.target}; nodes import only ComfyUI, torch, the "
                                f"standard library and the pack")
    return problems


def core_sources() -> dict[str, Source]:
    return read_tree(ROOT / CORE, CORE)


def pack_sources() -> dict[str, Source]:
    """The pack's root ``__init__`` and ``nodes/``, under the package name ``pack`` (ComfyUI
    names it after its folder)."""
    out = read_tree(ROOT / "nodes", "pack.nodes")
    out["pack"] = Source("pack", True, (ROOT / "__init__.py").read_text(), "__init__.py")
    return out


# --------------------------------------------------------------------------- the real tree


def test_every_unit_of_lumix_core_keeps_to_its_declared_layer():
    assert layer_violations(core_sources()) == []


def test_the_units_and_their_declared_imports():
    sources = core_sources()
    rules, problems = declared_rules(sources)
    assert problems == []
    # at most a handful of modules directly in lumix_core/; the rest lives in sub-packages
    assert sorted(u for u in rules if u not in subpackages(sources)) == [
        "lumix_core", "lumix_core.__main__", "lumix_core.cli", "lumix_core.cli_args", "lumix_core.conventions",
        "lumix_core.latents", "lumix_core.maps"]
    assert sorted(subpackages(sources)) == [
        "lumix_core.finish", "lumix_core.io", "lumix_core.model", "lumix_core.sampling", "lumix_core.shot",
        "lumix_core.toy", "lumix_core.train", "lumix_core.world"]


def test_no_cycle_between_units_declared_or_made():
    sources = core_sources()
    rules, _ = declared_rules(sources)
    assert find_cycle(rules) is None
    assert find_cycle(unit_graph(sources)) is None


def test_no_import_cycle_between_modules():
    assert find_cycle(module_graph(core_sources())) is None


def test_no_circle_between_modules_through_imports_inside_functions():
    assert find_cycle(module_graph(core_sources(), inside_functions=True)) is None


def test_lumix_core_imports_comfy_only_inside_the_trainers_host_functions():
    host = [imp for src in core_sources().values() for imp in imports_of(src) if imp.top in HOST_MODULES]
    assert host, "the trainer's ComfyUI host module was expected to import comfy (inside functions)"
    assert {imp.source for imp in host} == {COMFY_IMPORTER}
    assert all(imp.in_function for imp in host)


def test_nodes_import_only_comfy_torch_stdlib_and_the_pack():
    assert node_violations(pack_sources(), "pack") == []


# --------------------------------------------------------------------------- the checkers can fail


def _tree(files: Mapping[str, str]) -> dict[str, Source]:
    """In-memory sources; a name ending in '/' is a package (its ``__init__``)."""
    return {name.rstrip("/"): Source(name.rstrip("/"), name.endswith("/"), text) for name, text in files.items()}


_TINY = {
    "lumix_core/": '"""Core.\n\nMay import: lumix_core.maps.\n"""\nfrom .maps import MapSet\n',
    "lumix_core.maps": '"""Maps.\n\nMay import: nothing from lumix_core.\n"""\n',
    "lumix_core.model/": '"""Model.\n\nMay import: lumix_core.maps.\n"""\n',
    "lumix_core.model.qba": '"""QBA."""\nfrom ..maps import MapSet\nfrom . import flux\n',
    "lumix_core.model.flux": '"""FLUX."""\n',
    "lumix_core.world/": '"""World.\n\nMay import: lumix_core.maps,\n  lumix_core.model.\n"""\n',
    "lumix_core.world.render": '"""Render."""\nfrom ..maps import MapSet\n',
    "lumix_core.train/": '"""Train.\n\nMay import: lumix_core.maps, lumix_core.model.\n"""\n',
    "lumix_core.train.comfy_host": '"""Host."""\ndef f():\n    import comfy.sd\n',
}


def test_the_tiny_tree_passes_but_its_world_rule_breaks_the_design():
    problems = layer_violations(_tree(_TINY))
    assert problems == ["lumix_core.world may reach ['lumix_core.model'] through its 'May import:' chain; "
                        "the design forbids it"]
    fixed = dict(_TINY, **{"lumix_core.world/": '"""World.\n\nMay import: lumix_core.maps.\n"""\n'})
    assert layer_violations(_tree(fixed)) == []


def _clean(**changes: str) -> dict[str, Source]:
    files = dict(_TINY, **{"lumix_core.world/": '"""World.\n\nMay import: lumix_core.maps.\n"""\n'})
    files.update({k.replace("__", "."): v for k, v in changes.items()})
    return _tree(files)


def test_checker_flags_a_module_reaching_up_a_layer():
    reaching_up = '"""QBA."""\ndef f():\n    from ..world.render import x\n'
    problems = layer_violations(_clean(lumix_core__model__qba=reaching_up))
    assert len(problems) == 1 and "imports lumix_core.world.render; lumix_core.model may import only lumix_core.maps" \
        in problems[0], problems


def test_checker_flags_comfy_imports_outside_the_one_exception():
    problems = layer_violations(_clean(lumix_core__model__flux='"""FLUX."""\nimport comfy.ldm.flux.math\n'))
    assert len(problems) == 1 and "never imports ComfyUI" in problems[0], problems
    problems = layer_violations(_clean(lumix_core__train__comfy_host='"""Host."""\nfrom comfy import sd\n'))
    assert len(problems) == 1 and "at module level" in problems[0], problems


def test_checker_flags_a_missing_rule_an_unknown_name_and_an_absolute_import():
    problems = layer_violations(_clean(**{"lumix_core__model/": '"""Model, no rule."""\n'}))
    assert len(problems) == 1 and "exactly one 'May import:'" in problems[0], problems
    misspelt = '"""M.\n\nMay import: lumix_core.maps, lumix_core.wrold.\n"""\n'
    problems = layer_violations(_clean(**{"lumix_core__model/": misspelt}))
    assert len(problems) == 1 and "not other units" in problems[0], problems
    problems = layer_violations(_clean(lumix_core__world__render='"""R."""\nfrom lumix_core.maps import MapSet\n'))
    assert len(problems) == 1 and "absolutely" in problems[0], problems


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    loop = _clean(lumix_core__model__flux='"""F."""\nfrom .qba import x\n')
    assert find_cycle(module_graph(loop)) == ["lumix_core.model.flux", "lumix_core.model.qba", "lumix_core.model.flux"]
    lazy = _clean(lumix_core__model__flux='"""F."""\ndef f():\n    from .qba import x\n')
    assert find_cycle(module_graph(lazy)) is None
    assert find_cycle(module_graph(lazy, inside_functions=True)) == ["lumix_core.model.flux", "lumix_core.model.qba",
                                                                      "lumix_core.model.flux"]
    cyclic = _clean(lumix_core__model__flux='"""F."""\nfrom ..world import render\n',
                    lumix_core__world__render='"""R."""\nfrom ..model.flux import Flux\n',
                    **{"lumix_core__model/": '"""M.\n\nMay import: lumix_core.maps, lumix_core.world.\n"""\n',
                       "lumix_core__world/": '"""W.\n\nMay import: lumix_core.maps, lumix_core.model.\n"""\n'})
    assert find_cycle(unit_graph(cyclic)) == ["lumix_core.model", "lumix_core.world", "lumix_core.model"]
    assert find_cycle(declared_rules(cyclic)[0]) == ["lumix_core.model", "lumix_core.world", "lumix_core.model"]
    assert any("lumix_core.model may reach" in p and "lumix_core.world" in p for p in layer_violations(cyclic))


def test_node_checker_flags_what_is_not_thin():
    def check(text: str) -> list[str]:
        return node_violations(_tree({"pack/": '"""Pack."""\nfrom .nodes import X\n',
                                      "pack.nodes.a": text}), "pack")

    assert check("import torch\nimport folder_paths\nfrom ..lumix_core.maps import MapSet\n"
                 "from ._host import h\n") == []
    assert "absolutely" in check("from lumix_core.maps import MapSet\n")[0]
    assert "thin adapters" in check("from ..lumix_core.train.fit import fit\n")[0]
    assert "ComfyUI's module" in check("import nodes\n")[0]
    assert "only ComfyUI, torch" in check("import numpy\n")[0]
    assert "only its own" in check("from ..tests import helpers\n")[0]

"""The help text of every registered node: short at the point of use, the longer help in its doc page.

ComfyUI shows ``DESCRIPTION`` and the tooltips on the node itself, so they stay short; the
frontend's node help panel reads ``<WEB_DIRECTORY>/docs/<NodeName>.md``, served by ComfyUI
under ``/extensions/<pack folder>/``. Pure Python: the node classes come through ``pack_import``.
"""
import ast
import re
from pathlib import Path

import pytest
from pack_import import ROOT, pack_module

MAX_DESCRIPTION_CHARS = 300
MAX_DESCRIPTION_LINES = 3
MAX_TOOLTIP_CHARS = 150
MAX_LINE = 120
#: Words of change history that do not belong in the pack's code (it says what is, not what was).
HISTORY = re.compile(r"\b(today|yesterday|before|no longer|used to|previously|issue\s*#?\d+)\b", re.IGNORECASE)
#: A sentence end: ., ! or ? followed by whitespace or the end of the text (so 1.0, (n+1)/2, e.g. lumix pass).
SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.")


def _literal(path: Path, name: str):
    """The literal value of a module-level assignment ``name = ...`` (annotated or not) in ``path``."""
    for node in ast.parse(path.read_text()).body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(getattr(t, "id", None) == name for t in targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} assigns no {name}")


NODE_MODULES = tuple(f"nodes.{m}" for m in _literal(ROOT / "nodes" / "__init__.py", "_MODULES"))
DOCS = ROOT / _literal(ROOT / "__init__.py", "WEB_DIRECTORY") / "docs"
PACK_FILES = sorted((ROOT / "nodes").glob("*.py")) + [ROOT / "__init__.py"]


def _registered():
    classes, names, modules = {}, {}, {}
    for module in NODE_MODULES:
        mod = pack_module(module)
        assert set(mod.NODE_CLASS_MAPPINGS) == set(mod.NODE_DISPLAY_NAME_MAPPINGS), module
        classes.update(mod.NODE_CLASS_MAPPINGS)
        names.update(mod.NODE_DISPLAY_NAME_MAPPINGS)
        modules.update(dict.fromkeys(mod.NODE_CLASS_MAPPINGS, mod))
    return classes, names, modules


CLASSES, DISPLAY_NAMES, MODULES = _registered()
NODES = sorted(CLASSES)


def sentences(text: str) -> int:
    for abbreviation in ABBREVIATIONS:
        text = text.replace(abbreviation, abbreviation[:-1])
    return len(SENTENCE_END.findall(text))


def tooltip_problem(text) -> "str | None":
    """Why ``text`` is not a one-sentence tooltip, or None."""
    if not isinstance(text, str) or not text.strip():
        return "no tooltip"
    if "\n" in text or len(text) > MAX_TOOLTIP_CHARS:
        return f"{len(text)} characters (at most {MAX_TOOLTIP_CHARS}, one line)"
    if not text.endswith(".") or sentences(text) != 1:
        return "not one sentence ending in '.'"
    return None


def inputs_of(cls) -> dict:
    """Every visible input (required and optional; hidden ones have no widget) -> its options dict."""
    spec = cls.INPUT_TYPES()
    return {name: (opts[0] if opts else {})
            for section in ("required", "optional") for name, (_kind, *opts) in spec.get(section, {}).items()}


def outputs_of(cls) -> tuple:
    return tuple(getattr(cls, "RETURN_NAMES", ()) or ())


def description_source_lines(module, cls) -> int:
    """Source lines holding the text of ``cls.DESCRIPTION`` (the parentheses around it not counted)."""
    path = Path(module.__file__)
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for item in node.body:
                if isinstance(item, ast.Assign) and any(getattr(t, "id", None) == "DESCRIPTION" for t in item.targets):
                    segment = ast.get_source_segment(source, item.value)
                    return sum(1 for line in segment.splitlines() if line.strip() not in ("", "(", ")"))
    raise AssertionError(f"{cls.__name__} defines no DESCRIPTION in {path.name}")


# ----------------------------------------------------------------------------- the rule helpers themselves
@pytest.mark.parametrize("text, ok", [
    ("Image width in pixels, a multiple of 16 (the release was trained at 512).", True),
    ("[1.0, 0.0]: one step from t = 1 to t = 0, e.g. with euler.", True),
    ("Normal: unit vectors encoded (n+1)/2, OpenGL (Y up).", True),
    ("Noise seed. Unused with a one-step adapter.", False),
    ("No full stop at the end", False),
    ("x" * (MAX_TOOLTIP_CHARS + 1) + ".", False),
    ("", False),
])
def test_the_one_sentence_rule(text, ok):
    assert (tooltip_problem(text) is None) == ok


# ----------------------------------------------------------------------------- every registered node
def test_the_modules_register_the_whole_pack():
    assert len(NODES) == 15 and all(name.startswith("LumiX") for name in NODES)


@pytest.mark.parametrize("key", NODES)
def test_category_and_display_name(key):
    cls = CLASSES[key]
    assert cls.CATEGORY.startswith("LumiX/")
    assert DISPLAY_NAMES[key].startswith("LumiX ") and DISPLAY_NAMES[key] != key


@pytest.mark.parametrize("key", NODES)
def test_description_is_short(key):
    cls = CLASSES[key]
    text = cls.DESCRIPTION
    assert isinstance(text, str) and "\n" not in text and 40 <= len(text) <= MAX_DESCRIPTION_CHARS, len(text)
    assert description_source_lines(MODULES[key], cls) <= MAX_DESCRIPTION_LINES


@pytest.mark.parametrize("key", NODES)
def test_every_input_and_output_has_a_one_sentence_tooltip(key):
    cls = CLASSES[key]
    problems = {f"input {name}": tooltip_problem(opts.get("tooltip")) for name, opts in inputs_of(cls).items()}
    outputs = outputs_of(cls)
    if outputs:
        tips = getattr(cls, "OUTPUT_TOOLTIPS", ())
        assert len(tips) == len(outputs) == len(cls.RETURN_TYPES)
        problems.update({f"output {name}": tooltip_problem(tip) for name, tip in zip(outputs, tips)})
    assert {k: v for k, v in problems.items() if v} == {}


@pytest.mark.parametrize("key", NODES)
def test_every_node_has_its_help_page(key):
    page = DOCS / f"{key}.md"
    assert page.is_file(), f"{key} has no help page {page.relative_to(ROOT)}"
    text = page.read_text(encoding="utf-8")
    assert text.splitlines()[0] == f"# {DISPLAY_NAMES[key]}"
    assert "## Inputs" in text and "## Outputs" in text
    missing = [name for name in (*inputs_of(CLASSES[key]), *outputs_of(CLASSES[key]))
               if not re.search(rf"\b{re.escape(name)}\b", text)]
    assert missing == [], f"{page.name} does not mention {missing}"


def test_help_pages_belong_to_registered_nodes():
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert pages == set(NODES)


def test_the_pack_exports_its_web_directory():
    exported = _literal(ROOT / "__init__.py", "__all__")
    assert "WEB_DIRECTORY" in exported and DOCS.is_dir()
    # ComfyUI loads every .js file under WEB_DIRECTORY into the page; the pack ships none
    assert list(DOCS.parent.rglob("*.js")) == []


# ----------------------------------------------------------------------------- the pack's code
@pytest.mark.parametrize("path", PACK_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pack_code_lines_are_short_and_say_what_is(path):
    lines = path.read_text().splitlines()
    long = [i for i, line in enumerate(lines, 1) if len(line) > MAX_LINE]
    history = [(i, m.group(0)) for i, line in enumerate(lines, 1) for m in HISTORY.finditer(line)]
    assert long == [] and history == []

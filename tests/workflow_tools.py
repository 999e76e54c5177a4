"""Check ComfyUI UI-format workflows against node definitions, and convert them to API prompts.

A shipped workflow must load in ComfyUI as it is: every node type known, every socket and
link consistent with the node's definition, and as many widget values as the frontend will
assign. The frontend assigns ``widgets_values`` by position to the node's widgets, in input
order (required, then optional); an INT with ``control_after_generate`` (or, by the legacy
frontend convention, named ``seed``/``noise_seed``) is followed by its control value
("fixed", "randomize", ...), and an ``image_upload`` combo by its upload widget value. A wrong
count shifts every later value silently, which is why it is checked.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

#: Frontend-only nodes (no Python class): notes, reroutes, primitives.
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_NAMES = {"seed", "noise_seed"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


@dataclass(frozen=True)
class Widget:
    name: str
    type: str  # "COMBO" for lists
    options: Optional[tuple]  # combo choices
    control: bool  # followed by a control_after_generate value
    upload: bool  # followed by an upload widget value


@dataclass(frozen=True)
class NodeSpec:
    sockets: list[tuple[str, str]]  # non-widget inputs (name, type), in definition order
    required_sockets: set[str]
    widgets: list[Widget]
    required_widgets: int  # widgets among the required inputs (optional ones may be absent)
    outputs: list[str]  # output types


def _type_name(t: Any) -> str:
    return t if isinstance(t, str) else str(getattr(t, "value", t))


def node_spec(cls: Any) -> NodeSpec:
    """Sockets, widgets and outputs of a node class, as the frontend builds them."""
    spec = cls.INPUT_TYPES()
    sockets, required_sockets, widgets = [], set(), []
    required_widgets = 0
    for section in ("required", "optional"):
        for name, entry in (spec.get(section) or {}).items():
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if isinstance(kind, (list, tuple)):
                w = Widget(name, "COMBO", tuple(kind), False, bool(opts.get("image_upload")))
            elif _type_name(kind) in WIDGET_TYPES and not opts.get("forceInput"):
                t = _type_name(kind)
                control = t == "INT" and bool(opts.get("control_after_generate", name in CONTROL_NAMES))
                w = Widget(name, t, tuple(opts["options"]) if "options" in opts else None, control, False)
            else:
                sockets.append((name, _type_name(kind)))
                if section == "required":
                    required_sockets.add(name)
                continue
            widgets.append(w)
            if section == "required":
                required_widgets += 1
    outputs = [_type_name(t) for t in cls.RETURN_TYPES]
    return NodeSpec(sockets, required_sockets, widgets, required_widgets, outputs)


def _value_count(widgets: list[Widget]) -> int:
    return sum(1 + w.control + w.upload for w in widgets)


def split_widget_values(spec: NodeSpec, values: list) -> dict[str, Any]:
    """``widgets_values`` -> {widget name: value}, skipping control and upload values."""
    out, i = {}, 0
    for w in spec.widgets:
        if i >= len(values):
            break
        out[w.name] = values[i]
        i += 1 + w.control + w.upload
    return out


def check_workflow(workflow: Mapping, classes: Mapping[str, Any], *, check_combos: bool = True,
                   file_widgets: frozenset = frozenset(), external: frozenset = frozenset()) -> list[str]:
    """Problems found (empty list: the workflow is consistent with ``classes``).

    ``classes`` maps node types to classes; types not in it are reported, except ``external``
    ones (ComfyUI's own nodes when no host is available), whose links are still checked.
    Combo values are checked except for ``file_widgets`` (lists of the user's model files).
    """
    problems: list[str] = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    if len(nodes) != len(workflow["nodes"]):
        problems.append("duplicate node ids")
    if workflow.get("version") != 0.4:
        problems.append(f"version is {workflow.get('version')}, expected 0.4")
    if workflow.get("last_node_id", -1) < max(nodes):
        problems.append("last_node_id is smaller than a node id")
    links = {}
    for link in workflow["links"]:
        if len(link) != 6:
            problems.append(f"link {link} is not [id, from_node, from_slot, to_node, to_slot, type]")
            continue
        links[link[0]] = link
    if links and workflow.get("last_link_id", -1) < max(links):
        problems.append("last_link_id is smaller than a link id")

    specs: dict[int, NodeSpec] = {}
    for nid, node in nodes.items():
        t = node["type"]
        if t in VIRTUAL_NODES:
            continue
        if t not in classes:
            if t not in external:
                problems.append(f"node {nid}: unknown type {t}")
            continue
        spec = specs[nid] = node_spec(classes[t])
        where = f"node {nid} ({t})"
        got_in = [(i["name"], i["type"]) for i in node.get("inputs", []) if "widget" not in i]
        if got_in != spec.sockets[: len(got_in)] or not spec.required_sockets <= {n for n, _ in got_in}:
            problems.append(f"{where}: inputs {got_in} do not match the definition {spec.sockets}")
        got_out = [o["type"] for o in node.get("outputs", [])]
        if got_out != spec.outputs[: len(got_out)]:
            problems.append(f"{where}: outputs {got_out} do not match the definition {spec.outputs}")
        values = node.get("widgets_values", [])
        lo, hi = _value_count(spec.widgets[: spec.required_widgets]), _value_count(spec.widgets)
        if not lo <= len(values) <= hi:
            problems.append(f"{where}: {len(values)} widget values, the definition has {lo}..{hi} "
                            f"({[w.name for w in spec.widgets]})")
            continue
        i = 0
        for w in spec.widgets:
            if i >= len(values):
                break
            v = values[i]
            if check_combos and w.options is not None and w.name not in file_widgets and v not in w.options:
                problems.append(f"{where}: {w.name}={v!r} is not one of {list(w.options)[:8]}")
            if w.type in ("INT", "FLOAT") and not isinstance(v, (int, float)):
                problems.append(f"{where}: {w.name}={v!r} is not a number")
            if w.type == "BOOLEAN" and not isinstance(v, bool):
                problems.append(f"{where}: {w.name}={v!r} is not a boolean")
            if w.control and (i + 1 >= len(values) or values[i + 1] not in CONTROL_VALUES):
                problems.append(f"{where}: {w.name} must be followed by a control value {sorted(CONTROL_VALUES)}")
            i += 1 + w.control + w.upload

    for lid, (_, src, src_slot, dst, dst_slot, ltype) in links.items():
        if src not in nodes or dst not in nodes:
            problems.append(f"link {lid}: unknown node")
            continue
        s_node, d_node = nodes[src], nodes[dst]
        try:
            out = s_node["outputs"][src_slot]
            inp = d_node["inputs"][dst_slot]
        except (IndexError, KeyError):
            problems.append(f"link {lid}: slot out of range")
            continue
        if lid not in (out.get("links") or []) or inp.get("link") != lid:
            problems.append(f"link {lid}: not recorded on both ends")
        if not (out["type"] == ltype and inp["type"] in (ltype, "*")):  # "*": an input that takes any type
            problems.append(f"link {lid}: types {out['type']} -> {inp['type']} (link says {ltype})")
    for nid, node in nodes.items():
        for slot, inp in enumerate(node.get("inputs", [])):
            if inp.get("link") is not None and inp["link"] not in links:
                problems.append(f"node {nid}: input {inp['name']} refers to missing link {inp['link']}")
        for out in node.get("outputs", []):
            for lid in out.get("links") or []:
                if lid not in links:
                    problems.append(f"node {nid}: output {out['name']} refers to missing link {lid}")
        spec = specs.get(nid)
        if spec is not None:
            linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
            missing = spec.required_sockets - linked
            if missing:
                problems.append(f"node {nid} ({node['type']}): required inputs not connected: {sorted(missing)}")
    return problems


def to_api_prompt(workflow: Mapping, classes: Mapping[str, Any], replace: Optional[Mapping[str, str]] = None) -> dict:
    """UI workflow -> API prompt ``{id: {"class_type", "inputs"}}`` (what the frontend queues).

    ``replace`` maps node types to stand-in types with the same sockets and widgets (tests
    swap the real model loaders for tiny ones). A widget fed by a PrimitiveNode gets the
    primitive's value, as the frontend sends it.
    """
    replace = dict(replace or {})
    links = {link[0]: link for link in workflow["links"]}
    nodes = {n["id"]: n for n in workflow["nodes"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        t = replace.get(node["type"], node["type"])
        inputs = split_widget_values(node_spec(classes[t]), node.get("widgets_values", []))
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                _, src, src_slot, *_ = links[inp["link"]]
                if nodes[src]["type"] == "PrimitiveNode":  # the frontend queues a primitive's value, not a link
                    inputs[inp["name"]] = nodes[src]["widgets_values"][0]
                else:
                    inputs[inp["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": t, "inputs": inputs}
    return prompt


def load(path: "str | Path") -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))

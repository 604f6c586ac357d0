"""Scenario files: read, override and validate YAML into a :class:`Scenario`.

A scenario is validated once, at the edge (YAML -> :class:`Scenario`); everything after
trusts it. Unknown keys, wrong types and out-of-range values become a one-paragraph
:class:`~fleetsim.errors.UserError` that names the file, the key path and what is allowed.
The section models themselves live in :mod:`fleetsim.config`; the named components
(policy, model, dataset, ...) are checked where they are built
(:func:`fleetsim.build.load_scenario`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fleetsim.config import (  # noqa: F401  (the section models, re-exported)
    CostsConfig,
    DataConfig,
    DeviceClassConfig,
    DseConfig,
    EvalConfig,
    FleetConfig,
    ModelConfig,
    OptimizerConfig,
    OutputConfig,
    PartitionConfig,
    PolicyConfig,
    Scenario,
    Section,
    SelectorConfig,
    TopologyConfig,
    TraceConfig,
    TrainingConfig,
)
from fleetsim.errors import UserError

# ----------------------------------------------------------------------------- loading


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["training.rounds=5", ...]`` -> ``{"training.rounds": 5}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"command line: --set {item!r} is not of the form key.path=value. "
                            "Allowed: e.g. --set training.rounds=5 --set policy.name=distreal.")
        try:
            out[key.strip()] = _parse_yaml(raw) if raw.strip() else ""
        except _DuplicateKey as d:
            raise UserError(f"command line: --set {item!r}: the key '{d.path}' is given twice "
                            "in the value. Allowed: each key once per mapping.") from None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def apply_overrides(doc: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy); list items by index, e.g. classes.0.share."""
    import copy

    doc = copy.deepcopy(doc)
    for key, value in overrides.items():
        parts = key.split(".")
        node: Any = doc
        for i, p in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                node = node[int(p)]
                continue
            if p not in node or node[p] is None:
                node[p] = [] if nxt.isdigit() else {}
            node = node[p]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return doc


def _loc_text(loc: Sequence[int | str]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The section model that owns the key at ``loc`` (for listing allowed keys)."""
    model: Any = Scenario
    for p in loc[:-1]:
        if isinstance(p, int):
            continue
        field = model.model_fields.get(p) if isinstance(model, type) else None
        if field is None:
            return None
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            for c in (cand, *getattr(cand, "__args__", ())):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    model = c
                    break
            else:
                continue
            break
        else:
            return None
    return model if isinstance(model, type) else None


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
    "dict": "a mapping of keys to values", "tuple": "a list", "list": "a list",
    "finite_number": "a finite number",
}


def _allowed_for(err: dict[str, Any]) -> str:
    typ: str = err["type"]
    ctx = err.get("ctx", {}) or {}
    loc = err["loc"]
    if typ == "extra_forbidden":
        model = _model_at(loc)
        return ("the keys " + ", ".join(model.model_fields)) if model else "no such key"
    if typ == "missing":
        return "a value for this required key"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}
    if typ in bounds:
        key = next(iter(ctx))
        return f"a number {bounds[typ]} {ctx[key]}"
    if typ == "literal_error":
        return f"one of {ctx.get('expected')}"
    if typ in ("too_short", "too_long"):
        return f"a list of length {ctx.get('min_length', '')}..{ctx.get('max_length', '')}"
    for word, text in _TYPE_WORDS.items():
        if typ.startswith(word):
            return text + (" or null" if "none" in err.get("msg", "").lower() else "")
    if typ == "value_error":
        return "a value that satisfies the rule above (see `fleetsim schema`)"
    return "see `fleetsim schema`"


def validation_error(exc: ValidationError, source: str, prefix: tuple[str | int, ...] = (),
                     overrides: Sequence[str] = ()) -> UserError:
    """Turn pydantic's error into the one-paragraph :class:`UserError`."""
    errs = exc.errors()
    err = errs[0]
    loc = (*prefix, *err["loc"])
    key = _loc_text(loc)
    msg = err["msg"].removeprefix("Value error, ")
    where = source
    dotted = ".".join(str(p) for p in loc)  # as --set writes it: fleet.classes.0.share
    if any(dotted == o or dotted.startswith(o + ".") or o.startswith(dotted + ".")
           for o in overrides):
        where = f"{source} (command-line --set)"
    given = err.get("input")
    if err["type"] == "extra_forbidden":
        problem = "unknown key"
    elif err["type"] == "missing":
        problem = "required key is missing"
    elif isinstance(given, dict | list) and err["type"] == "value_error":
        problem = msg
    else:
        problem = f"{given!r} is not allowed ({msg})"
    more = f" ({len(errs) - 1} more problem{'s' if len(errs) > 2 else ''} after this one)" \
        if len(errs) > 1 else ""
    at = f"at '{key}'" if key else "at the top level"
    return UserError(f"{where}: {at}: {problem}. Allowed: {_allowed_for(err)}.{more}")


def read_scenario(path: str | os.PathLike[str] | None, overrides: Sequence[str] = (), *,
                  text: str | None = None, source: str | None = None) -> Scenario:
    """Read, override and validate the shape of a scenario (its sections and keys).

    The named components (policy, model, dataset, ...) are checked where they are built:
    :func:`fleetsim.build.load_scenario` does both, and is what users call.

    Parameters
    ----------
    path : the YAML file (or None with ``text``)
    overrides : ``key.path=value`` strings from ``--set``
    text : YAML text instead of a file
    source : how messages name where the scenario came from (default: the path, or
        ``<scenario text>``)
    """
    source = source or (str(path) if path is not None else "<scenario text>")
    if text is None:
        text = _read_scenario_file(Path(path), source)  # type: ignore[arg-type]
    doc = load_yaml(text, source)
    if doc is None:
        raise UserError(f"{source}: the scenario is empty (no keys: the file is blank or "
                        "holds only comments). Allowed: a YAML mapping of the scenario "
                        "sections, e.g. training: {rounds: 5}; `fleetsim schema` lists them.")
    if not isinstance(doc, dict):
        raise UserError(f"{source}: at the top level: a {type(doc).__name__} is not allowed. "
                        "Allowed: a mapping of the sections name, seed, data, model, fleet, "
                        "training, policy, selector, eval, costs, output.")
    parsed = parse_overrides(overrides)
    try:
        doc = apply_overrides(doc, parsed)
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise UserError(f"{source} (command-line --set): an override does not fit the "
                        f"scenario's structure ({exc}). Allowed: key paths of existing "
                        "sections, list items by index.") from None
    base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    doc = _resolve_paths(doc, base_dir)
    try:
        sc = Scenario.model_validate(doc)
    except ValidationError as exc:
        raise validation_error(exc, source, overrides=list(parsed)) from None
    sc._doc = doc
    sc._source = source
    return sc


_SCENARIO_EXAMPLE = "the path of a YAML scenario file, e.g. scenarios/quickstart.yaml"


def _read_scenario_file(p: Path, source: str) -> str:
    if p.is_dir():
        raise UserError(f"{source}: is a folder, not a scenario file. Allowed: "
                        f"{_SCENARIO_EXAMPLE}.")
    if not p.exists():
        raise UserError(f"{source}: the scenario file does not exist. Allowed: "
                        f"{_SCENARIO_EXAMPLE}.")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{source}: the scenario file cannot be read ({exc}). Allowed: "
                        f"{_SCENARIO_EXAMPLE} (UTF-8 text).") from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e7`` as a number.

    PyYAML follows YAML 1.1, whose floats need a dot (``1.0e7``), so ``1e7`` and
    ``--set x=1e-3`` were strings: fine for the scenario's own float keys (pydantic parses
    them), but not for component options with their own types, and wrong as data. YAML 1.2
    and every other parser read them as floats; so does this one.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


class _DuplicateKey(Exception):
    def __init__(self, path: str, first: int, again: int) -> None:
        super().__init__(path)
        self.path, self.first, self.again = path, first, again


def _parse_yaml(text: str) -> Any:
    """One YAML document (None if there is none); raises :class:`_DuplicateKey` or
    ``yaml.YAMLError``."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(loader, node, (), set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document; a key given twice in one mapping is an error.

    PyYAML keeps the last of duplicate keys without a word, so ``rounds: 5`` followed
    later by ``rounds: 50`` would run 50 rounds: the document is composed first, every
    mapping is checked for repeated keys (with the key path and both lines), and only
    then is it constructed. ``1e7`` is a number (see :class:`_Loader`).

    Returns
    -------
    The document (None when the text holds no document or only null).
    """
    try:
        return _parse_yaml(text)
    except _DuplicateKey as d:
        raise UserError(
            f"{source}: at '{d.path}': the key is given twice in the same mapping (line "
            f"{d.first} and line {d.again}); YAML would silently keep the last. Allowed: each "
            "key once per mapping (delete one of them).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"{source}: the file is not valid YAML{line}: "
                        f"{getattr(exc, 'problem', None) or exc}. Allowed: a YAML mapping of "
                        "the scenario sections.") from None


def _check_duplicate_keys(loader: yaml.SafeLoader, node: yaml.Node,
                          loc: tuple[str | int, ...], active: set[int]) -> None:
    if id(node) in active:  # an alias that refers to its own ancestor: seen already
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base' merges, on purpose
                _check_duplicate_keys(loader, value_node, loc, active)
                continue
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode):
                key = loader.construct_object(key_node)  # 'a' and "a" are the same key
                if key in seen:
                    raise _DuplicateKey(_loc_text((*loc, str(key))), seen[key], line)
                seen[key] = line
            else:  # a complex key (a list or mapping): the schema rejects it anyway
                key = f"<key at line {line}>"
            _check_duplicate_keys(loader, value_node, (*loc, str(key)), active)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(loader, item, (*loc, i), active)
    active.discard(id(node))


def _resolve_paths(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make file paths in the scenario relative to the scenario file, not the cwd."""
    def fix(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "plugins" and isinstance(v, list):
                    node[k] = [str(base / x) if x.endswith(".py") and not os.path.isabs(x)
                               else x for x in v]
                elif k == "factory" and isinstance(v, str) and ".py:" in v:
                    # model.options.factory: 'file.py:name', the file part a path
                    file, _, name = v.rpartition(":")
                    cand = base / file
                    if not os.path.isabs(file) and (cand.exists() or not Path(file).exists()):
                        node[k] = f"{cand}:{name}"
                elif (k in ("file", "calibration", "front", "path", "root")
                        and isinstance(v, str) and v and not os.path.isabs(v)):
                    cand = base / v
                    if cand.exists() or not Path(v).exists():
                        node[k] = str(cand)
                else:
                    fix(v)
        elif isinstance(node, list):
            for v in node:
                fix(v)

    fix(doc)
    return doc

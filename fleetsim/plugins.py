"""Plugins: the user's Python files or modules that register components.

Loaded once per process, by whoever builds components from a scenario (and again in each
worker process, which needs the user's models and datasets too). A plugin is user code:
anything it raises becomes one paragraph naming the file, the line and the exception.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from fleetsim.errors import UserError

_LOADED_PLUGINS: dict[str, object] = {}


def load_plugins(plugins: Sequence[str], source: str = "<scenario>") -> None:
    """Import plugin files or modules once per process (they register components)."""
    for i, item in enumerate(plugins):
        import_plugin(item, f"{source}: at 'plugins[{i}]'")


def import_plugin(item: str, at: str) -> object:
    """Import one plugin file or module (once per process) and return the module.

    ``at`` starts every error message (``"<file>: at '<key path>'"``).
    """
    import importlib
    import importlib.util
    import sys

    if item in _LOADED_PLUGINS:
        return _LOADED_PLUGINS[item]
    cannot = ("Allowed: a Python file path (relative to the scenario) or an importable "
              "module name.")
    name = item
    try:
        if item.endswith(".py"):
            p = Path(item)
            if not p.is_file():
                raise UserError(f"{at}: the plugin file {item} does not exist. {cannot}")
            name = f"fleetsim_plugin_{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"
            spec = importlib.util.spec_from_file_location(name, p)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(item)
    except UserError:
        raise
    except ModuleNotFoundError as exc:
        sys.modules.pop(name, None)
        if exc.name is not None and (item == exc.name or item.startswith(exc.name + ".")):
            raise UserError(f"{at}: {item!r} cannot be imported ({exc}). {cannot}"
                            ) from None
        raise _plugin_error(at, item, exc) from None
    except (Exception, SystemExit) as exc:  # a plugin is user code: anything can come
        sys.modules.pop(name, None)
        raise _plugin_error(at, item, exc) from None
    _LOADED_PLUGINS[item] = mod
    return mod


def load_object(ref: str, at: str) -> object:
    """The object ``ref`` names: ``path/to/file.py:name`` or ``package.module:name``."""
    where, sep, attr = ref.rpartition(":")
    allowed = ("Allowed: 'path/to/file.py:name' (relative to the scenario) or "
               "'package.module:name'.")
    if not sep or not where or not attr.isidentifier():
        raise UserError(f"{at}: {ref!r} does not name a file or module and a name in it. "
                        f"{allowed}")
    mod = import_plugin(where, at)
    obj = getattr(mod, attr, None)
    if obj is None:
        names = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == getattr(mod, "__name__", None))
        raise UserError(f"{at}: {where} defines no {attr!r}. Allowed: a function or class "
                        f"defined there ({', '.join(names) or 'it defines none'}).")
    return obj


def _plugin_error(at: str, item: str, exc: BaseException) -> UserError:
    """A plugin failed while being imported: name its file, the line and the exception."""
    import traceback

    if isinstance(exc, SyntaxError):  # raised by the compiler: it knows file and line
        file, line = exc.filename or item, exc.lineno
        what = f"SyntaxError: {exc.msg}"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        # the plugin's own line, if the error came up through it; else where it was raised
        mine = [f for f in frames if item.endswith(".py") and _same_file(f.filename, item)]
        user = [f for f in frames if "importlib" not in f.filename]
        frame = (mine or user or frames or [None])[-1]
        file = frame.filename if frame is not None else item
        line = frame.lineno if frame is not None else None
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    where = f"{file}, line {line}" if line else file
    return UserError(f"{at}: the plugin {item!r} failed while being imported, with {what} "
                     f"(at {where}). Allowed: a plugin that imports without error; fix "
                     f"{where}.")


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False

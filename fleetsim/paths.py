"""Output paths checked before any work starts.

A run, a batch or a search can take hours; an output path that cannot be written must not
be discovered only when the results are. Every command that writes checks its output path
first with :func:`check_output_dir` (a folder it fills) or :func:`check_output_file` (one
file it writes). They create nothing: they find the nearest existing ancestor of the path
and make sure that what exists is of the right kind (a folder where a folder is wanted,
no file where a folder must be made) and that files can be created where they will be.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fleetsim.errors import UserError

#: environment variable naming fleetsim's cache folder (the DSE's evaluations and fronts)
CACHE_ENV = "FLEETSIM_CACHE_DIR"


def user_cache_dir() -> Path:
    """fleetsim's cache folder, shared by every project folder of this user.

    ``$FLEETSIM_CACHE_DIR`` if set; else ``$XDG_CACHE_HOME/fleetsim`` (the XDG Base
    Directory specification; a relative ``XDG_CACHE_HOME`` is ignored, as it says);
    else ``~/.cache/fleetsim``. Nothing is created here.
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "fleetsim"


def _nearest_existing(p: Path) -> Path:
    for anc in (p, *p.parents):
        if anc.exists() or anc.is_symlink():  # a dangling link is in the way too
            return anc
    return Path(p.anchor or ".")


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder``.

    ``os.access`` alone says yes to root everywhere, also where the file system refuses
    (``/proc``, a read-only mount), so a nameless temporary file is created there too
    (Linux's O_TMPFILE leaves no entry behind; elsewhere it is deleted at once).
    """
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True


def _error(option: str, path: Path | str, problem: str, allowed: str,
           source: str = "command line") -> UserError:
    return UserError(f"{source}: at '{option}': {path}: {problem}. Allowed: {allowed}.")


def _check_folder_chain(p: Path, shown: str, option: str, allowed: str, source: str,
                        make_parents: bool) -> None:
    """The folder ``p`` exists and is writable, or can be made (``make_parents``)."""
    anc = _nearest_existing(p)
    if not anc.is_dir():
        what = "a link to nothing" if anc.is_symlink() and not anc.exists() else "a file"
        problem = f"is {what}, not a folder" if anc == p else \
            f"{anc} is {what}, so nothing can be made under it"
        raise _error(option, shown, problem, allowed, source)
    if not _writable(anc):
        raise _error(option, shown, f"{anc} is not writable (no new files can be made "
                     "there)", allowed, source)
    if anc != p and not make_parents:
        raise _error(option, shown, f"the folder {p} does not exist", allowed, source)


def check_output_dir(path: str | os.PathLike[str], option: str = "--out", *,
                     must_exist: bool = False, source: str = "command line",
                     allowed: str | None = None) -> Path:
    """Check that ``path`` is, or can become, a folder this process can write into.

    Parameters
    ----------
    path : the output folder
    option : the command-line option that gave it, for the message
    must_exist : the folder must exist already (e.g. the input of ``fleetsim report``)
    source : where the path came from, for the message
    allowed : what to suggest instead (default: a writable folder)

    Returns
    -------
    ``path`` as a :class:`Path`.

    Raises
    ------
    UserError : it is a file or lies under one, it does not exist (``must_exist``), or no
        file can be created where it is or would be made
    """
    p = Path(path)
    allowed = allowed or "a folder that exists or can be created, and that you may write to"
    if must_exist and not p.exists():
        raise _error(option, p, "the folder does not exist", allowed, source)
    _check_folder_chain(p, str(p), option, allowed, source, make_parents=True)
    return p


def check_output_file(path: str | os.PathLike[str], option: str = "-o", *,
                      make_parents: bool = True, source: str = "command line",
                      allowed: str | None = None) -> Path:
    """Check that the file ``path`` can be written (created, or replaced).

    Parameters
    ----------
    path : the output file
    option : the command-line option that gave it, for the message
    make_parents : the writer creates missing folders (else the folder must exist)
    source : where the path came from, for the message
    allowed : what to suggest instead (default: a file in a writable folder)

    Returns
    -------
    ``path`` as a :class:`Path`.

    Raises
    ------
    UserError : it is a folder, its folder is a file or lies under one, its folder is
        missing (without ``make_parents``), or files cannot be created there
    """
    p = Path(path)
    allowed = allowed or ("a file path in a folder that exists" +
                          (" or can be created" if make_parents else "") +
                          ", and that you may write to")
    if p.is_dir():
        raise _error(option, p, "is a folder, not a file", allowed, source)
    if p.is_symlink() and not p.exists():
        raise _error(option, p, "is a link to nothing", allowed, source)
    # writers replace the file atomically (a temporary file renamed over it), so what
    # counts is the folder, not the old file's own permissions
    _check_folder_chain(p.parent if str(p.parent) else Path("."), str(p), option, allowed,
                        source, make_parents)
    return p

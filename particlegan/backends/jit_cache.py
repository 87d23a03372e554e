"""On-disk cache of the compiled numba drivers: compile once per version, not once per process.

Without a cache the cpu backend compiles its parallel drivers in every process (~6 s), which is
more than a short run spends stepping. Numba's own ``cache=True`` is not safe for this package:
it keys a cached function on its own source file only, so an edit of :mod:`particlegan.maths.pairmath`
(inlined into the drivers) would leave stale machine code behind, and two processes that compile
different signatures of one function at once can pair an index entry with the other's data file.
So this module attaches its own cache to each driver (:func:`attach`):

* **Where**: ``<user cache dir>/particlegan/numba/<stamp>/`` (numba's ``AppDirs`` rule: e.g.
  ``~/.cache`` or ``$XDG_CACHE_HOME`` on Linux, ``~/Library/Caches`` on macOS); the base is
  overridden by ``PARTICLEGAN_CACHE_DIR``; ``PARTICLEGAN_NUMBA_CACHE=0`` turns caching off.
* **Invalidation**: ``<stamp>`` hashes every ``.py`` file of the package together with the
  versions of particlegan, numba, llvmlite and Python, so an upgrade or any edit of the package
  compiles afresh; numba's index key adds the CPU name and features (``NUMBA_CPU_NAME=generic``
  and host code are separate entries). The four most recently used stamp directories are kept.
* **Concurrency**: each data file is named after its own index key (no shared counter), and the
  read-modify-write of an index runs under an exclusive ``flock``; files are written to a
  temporary name and renamed, so a reader sees an old or a new file, never half of one.
* **Failure**: an unwritable cache directory turns caching off for the process; an unreadable,
  corrupt or vanished cache file is a miss (the function is compiled), never an error.

Importing this module changes no environment variable and no numba setting.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

ENV_SWITCH = "PARTICLEGAN_NUMBA_CACHE"
ENV_DIR = "PARTICLEGAN_CACHE_DIR"
KEEP_STAMPS = 4

# what reading a damaged or foreign cache file can raise: all of it means "not cached"
_UNREADABLE = (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
               ImportError, IndexError, KeyError)
_STATE: dict = {}  # the process's cache settings, computed once by settings()


def cache_base() -> Path:
    """The directory holding the stamp directories (``.../particlegan/numba``)."""
    base = os.environ.get(ENV_DIR)
    if not base:
        from numba.misc.appdirs import AppDirs

        base = AppDirs(appname="particlegan", appauthor=False).user_cache_dir
    return Path(base).expanduser() / "numba"


def source_stamp(package_dir: str | Path | None = None, versions: tuple | None = None) -> str:
    """Hash of the package's Python sources and of the versions its machine code depends on.

    Parameters
    ----------
    package_dir : the package directory (default: this installed package).
    versions : (particlegan, numba, llvmlite, python) version strings (default: the running ones).
    """
    if versions is None:
        import llvmlite
        import numba

        from particlegan import __version__

        versions = (__version__, numba.__version__, llvmlite.__version__, sys.version)
    pkg = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    h.update(repr(tuple(versions)).encode())
    for path in sorted(pkg.rglob("*.py")):
        h.update(str(path.relative_to(pkg)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _prune(base: Path, keep: str) -> None:
    """Remove all but the KEEP_STAMPS most recently used stamp directories (best effort)."""
    try:
        dirs = sorted((p for p in base.iterdir() if p.is_dir() and p.name != keep),
                      key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in dirs[KEEP_STAMPS - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def settings() -> dict:
    """This process's cache settings: ``enabled``, ``path`` (or None) and ``new`` (the stamp
    directory did not exist before, i.e. this version compiles for the first time here)."""
    if not _STATE:
        _STATE.update(enabled=False, path=None, new=False)
        if os.environ.get(ENV_SWITCH, "1") != "0":
            base = cache_base()
            stamp = source_stamp()
            path = base / stamp
            new = not path.exists()
            if _writable(path):
                os.utime(path)  # mark as recently used for _prune
                _STATE.update(enabled=True, path=path, new=new)
                if new:
                    _prune(base, stamp)
    return _STATE


def _make_cache_class():
    """Build the numba cache classes lazily (importing numba.core.caching costs ~0.1 s)."""
    import contextlib

    try:
        import fcntl
    except ImportError:  # not POSIX: index updates unlocked (key-named data files stay safe)
        fcntl = None

    from numba.core.caching import (CompileResultCacheImpl, FunctionCache, IndexDataCacheFile,
                                    _CacheLocator)

    class PackageLocator(_CacheLocator):
        """Every driver of the package in one stamp directory; the stamp covers all sources."""

        def __init__(self, py_func, py_file):
            self._lineno = py_func.__code__.co_firstlineno
            self._path = str(settings()["path"])

        def get_cache_path(self):
            return self._path

        def get_source_stamp(self):
            return Path(self._path).name

        def get_disambiguator(self):
            return str(self._lineno)

        @classmethod
        def from_function(cls, py_func, py_file):
            return cls(py_func, py_file)

    class PackageCacheImpl(CompileResultCacheImpl):
        _locator_classes = [PackageLocator]

    class SafeIndexFile(IndexDataCacheFile):
        """Key-named data files, locked index updates, and I/O trouble treated as a miss."""

        @contextlib.contextmanager
        def _locked(self):
            if fcntl is None:
                yield
                return
            with open(os.path.join(self._cache_path, ".lock"), "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

        def save(self, key, data):
            name = "%s.%s.nbc" % (self._index_name[:-4],
                                  hashlib.sha256(repr(key).encode()).hexdigest()[:16])
            try:
                self._save_data(name, data)  # before the index entry that points to it
                with self._locked():
                    overloads = self._load_index()
                    overloads[key] = name
                    self._save_index(overloads)
            except OSError:
                pass  # no cache entry this time; the compiled function is used all the same

        def _load_index(self):
            try:
                return super()._load_index()
            except _UNREADABLE:  # a corrupt index is an empty one (rewritten on the next save)
                return {}

        def load(self, key):
            try:
                return super().load(key)
            except _UNREADABLE:
                return None

    class PackageFunctionCache(FunctionCache):
        _impl_class = PackageCacheImpl

        def __init__(self, py_func):
            super().__init__(py_func)
            self._cache_file = SafeIndexFile(cache_path=self._cache_path,
                                             filename_base=self._impl.filename_base,
                                             source_stamp=self._impl.locator.get_source_stamp())

    return PackageFunctionCache


def attach(*dispatchers) -> bool:
    """Give each numba dispatcher this package's disk cache (when enabled and writable).

    Returns whether caching is on. On the first use of a new stamp directory, says once on an
    interactive terminal that the kernels are being compiled.
    """
    state = settings()
    if not state["enabled"]:
        return False
    if "cls" not in _STATE:
        _STATE["cls"] = _make_cache_class()
        if state["new"]:
            from particlegan.progress import Reporter

            Reporter().info(f"particlegan: compiling the cpu kernels for this version (once, "
                            f"~10 s); cached in {state['path']}")
    for dispatcher in dispatchers:
        dispatcher._cache = _STATE["cls"](dispatcher.py_func)
    return True

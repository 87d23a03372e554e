"""Atomic, reproducible run storage.

Every file is written to a temporary name in the destination directory and moved into place
with :func:`os.replace`, so a killed run never leaves a half-written file. ``.npz`` archives are
written with a fixed zip timestamp so the same arrays give bitwise-identical files.
"""
from __future__ import annotations

import io
import json
import os
import platform
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from particlegan.errors import DataError

_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + os.replace).

    The file gets the permissions of a plainly created one (0666 minus the umask), not the
    private 0600 of the temporary file, so results stay readable on shared machines.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as pretty, key-sorted, standard JSON atomically (NaN/inf are refused: store
    them as null with a reason, see :meth:`particlegan.engine.simulate.SimResult.summary`)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def atomic_write_csv(path: str | Path, rows, columns=None, float_format: str | None = None) -> None:
    """Atomically write dict rows as CSV (header = ``columns``, default the first row's keys).

    Parameters
    ----------
    rows : iterable of mappings; keys outside ``columns`` are ignored, missing ones left empty.
    float_format : e.g. "{:.6g}" for Python floats (default: repr, which round-trips exactly).
    """
    import csv

    rows = list(rows)
    if columns is None:
        if not rows:
            raise DataError(f"no rows to write to '{path}' and no columns given")
        columns = list(rows[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        if float_format is not None:
            row = {k: (float_format.format(v) if isinstance(v, float) else v) for k, v in row.items()}
        writer.writerow(row)
    atomic_write_bytes(path, buf.getvalue().encode())


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise arrays as an uncompressed-deterministic ``.npz`` (fixed timestamps, sorted names)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def atomic_save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically write a deterministic ``.npz`` (bitwise identical for identical arrays)."""
    atomic_write_bytes(path, npz_bytes(arrays))


def ensure_dir(path: str | Path) -> Path:
    """Create the output directory; DataError with a one-line message if it cannot be."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"output directory '{p}' cannot be created: {exc.strerror or exc}") from None
    if not os.access(p, os.W_OK):
        raise DataError(f"output directory '{p}' is not writable")
    return p


def check_output_file(path: str | Path, option: str, suffix: str | None = None) -> Path:
    """Check that a file can be written at ``path`` before any work is done for it.

    Refused (DataError naming ``option``): a path that is a directory, a parent directory that
    does not exist or is not writable, or (with ``suffix``) another file extension. Parent
    directories are never created: a typo must not scatter folders over the file system.
    """
    p = Path(path)
    if suffix is not None and p.suffix != suffix:
        raise DataError(f"{option} '{p}': the file is written as {suffix}")
    if p.is_dir():
        raise DataError(f"{option} '{p}' is a directory; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise DataError(f"{option} '{p}': directory '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise DataError(f"{option} '{p}': directory '{parent}' is not writable")
    return p


COMMAND_ENV = "PARTICLEGAN_COMMAND"  # the CLI's command line, inherited by sweep workers
_GIT_CACHE: dict[str, dict | None] = {}


def git_state() -> dict | None:
    """Commit of the particlegan checkout and whether it has uncommitted changes, when the
    package is imported from a git checkout (an editable install); None otherwise."""
    import subprocess

    pkg_dir = str(Path(__file__).resolve().parent.parent)  # the particlegan package
    if pkg_dir in _GIT_CACHE:
        return _GIT_CACHE[pkg_dir]
    state = None
    try:
        def git(*args):
            return subprocess.run(["git", "-C", pkg_dir, *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        top = Path(git("rev-parse", "--show-toplevel"))
        if (top / "particlegan").resolve() == Path(pkg_dir):  # our own checkout, not an enclosing repo
            state = {"commit": git("rev-parse", "HEAD"),
                     "modified": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        state = None
    _GIT_CACHE[pkg_dir] = state
    return state


def cpu_model() -> str:
    """The processor's model name (Linux /proc/cpuinfo, else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict:
    """Where and how a run was made (stored in meta.json): package versions, the git commit of
    the checkout and whether it was modified, host, CPU model, thread settings, command line."""
    import socket
    import sys

    import numba

    threads = {k: os.environ.get(k) for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                               "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                               "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    threads["numba_threads"] = numba.get_num_threads()
    return {"versions": versions(), "git": git_state(), "host": socket.gethostname(),
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": threads,
            "command": os.environ.get(COMMAND_ENV) or " ".join(sys.argv)}


def versions() -> dict:
    """Versions of the package and of the numerical stack (stored in every meta.json)."""
    import numba
    import scipy

    from particlegan import __version__
    from particlegan.numba_setup import malloc_setting, vector_width_setting

    return {
        "particlegan": __version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "numba_cpu": os.environ.get("NUMBA_CPU_NAME", "host"),
        "numba_vector_width": vector_width_setting(),
        "malloc": malloc_setting(),
    }


def split_npz_key(path: str | Path) -> tuple[Path, str | None]:
    """``"data.npz:name"`` -> (Path("data.npz"), "name"); any other path -> (Path(path), None).

    The ``:name`` suffix picks one array of a multi-array ``.npz`` (a file whose own name
    ends in ``.npz:name`` is taken as it is)."""
    text = str(path)
    head, sep, key = text.rpartition(":")
    if sep and key and head.lower().endswith(".npz") and "/" not in key and not Path(text).exists():
        return Path(head), key
    return Path(text), None


IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path, what: str, max_items: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST format: ``train-images-idx3-ubyte``, or its ``.gz``).

    Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, one big-endian uint32 per dimension,
    then the items in C order, big-endian.

    Parameters
    ----------
    what : the config key, named in errors.  max_items : read only the first items (the file
        is not read further, so the first 100 images of a 47 MB file cost microseconds).

    Returns
    -------
    Array of shape (n_items, dim_1, ...) in the file's type (native byte order).

    Raises
    ------
    DataError (one line naming ``what`` and the file): missing, bad magic number, unknown type,
    truncated header or data.
    """
    import gzip

    p = Path(path)
    label = f"{what} file '{path}'"
    if not p.is_file():
        raise DataError(f"{label} does not exist" if not p.exists() else f"{label} is not a regular file")
    try:
        with open(p, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        opener = gzip.open if gz else open
        with opener(p, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00":
                raise DataError(f"{label} is not an IDX file (bad magic number {head.hex() or 'empty'}; "
                                "expected 0000 then type and rank bytes)")
            if head[2] not in IDX_TYPES:
                raise DataError(f"{label}: unknown IDX data type 0x{head[2]:02x}")
            rank = head[3]
            if rank == 0:
                raise DataError(f"{label}: an IDX file of rank 0 holds no items")
            dims_raw = fh.read(4 * rank)
            if len(dims_raw) < 4 * rank:
                raise DataError(f"{label} is truncated (header of {rank} dimensions cut short)")
            dims = [int.from_bytes(dims_raw[4 * k:4 * k + 4], "big") for k in range(rank)]
            n = dims[0] if max_items is None else min(dims[0], max_items)
            dtype = np.dtype(IDX_TYPES[head[2]])
            want = n * int(np.prod(dims[1:], dtype=np.int64)) * dtype.itemsize
            data = fh.read(want)
    except (OSError, EOFError) as exc:
        raise DataError(f"{label} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if len(data) < want:
        raise DataError(f"{label} is truncated: {len(data)} bytes of data where the header "
                        f"({' x '.join(map(str, dims))}) needs {want} for {n} items")
    return np.frombuffer(data, dtype=dtype).reshape([n, *dims[1:]]).astype(dtype.newbyteorder("="))


def load_sample_array(path: str | Path, what: str, ncols: int | None = None, min_rows: int = 1) -> np.ndarray:
    """Load a 2-D array of samples (n, d) from ``.npy`` or ``.npz`` as float64.

    An ``.npz`` must hold exactly one array, or the array is named as ``FILE.npz:NAME``
    (:func:`split_npz_key`). Loaded with ``allow_pickle=False``; a file without the npy/zip
    magic is refused before ``np.load`` sees it (np.load would treat it as a pickle). Accepted:
    a 2-D array of real numbers (float or integer dtype), at least ``min_rows`` rows, ``ncols``
    columns when given, only finite values. Anything else raises DataError naming ``what``, the
    file and the problem.
    """
    p, key = split_npz_key(path)
    label = f"{what} file '{path}'"
    if not p.exists():
        raise DataError(f"{label} does not exist")
    if not p.is_file():
        raise DataError(f"{label} is not a regular file")
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise DataError(f"{label} must be .npy or .npz, got '{p.suffix or '(no suffix)'}'")
    magic = b"\x93NUMPY" if suffix == ".npy" else b"PK"
    try:
        with open(p, "rb") as fh:
            head = fh.read(len(magic))
    except OSError as exc:
        raise DataError(f"{label} cannot be read: {exc.strerror or exc}") from None
    if head != magic:
        raise DataError(f"{label} is not a readable numpy file (bad {suffix} header)")
    try:
        loaded = np.load(p, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                names = list(loaded.files)
                if not names:
                    raise DataError(f"{label} is an empty .npz archive")
                if key is None and len(names) > 1:
                    raise DataError(f"{label} holds {len(names)} arrays ({', '.join(names[:6])}"
                                    f"{', ...' if len(names) > 6 else ''}); name one as "
                                    f"'{p}:{names[0]}'")
                if key is not None and key not in names:
                    raise DataError(f"{label} has no array {key!r} (it holds {', '.join(names[:6])})")
                arr = loaded[key if key is not None else names[0]]
        else:
            arr = loaded
    except DataError:
        raise
    except ValueError as exc:
        if "max_header_size" in str(exc):  # numpy's guard against huge (unsafe to parse) headers
            raise DataError(f"{label} has an oversized .npy header (over numpy's safety limit of "
                            "10000 bytes); it is not loaded") from None
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(f"{label} holds an object array (pickled data is not loaded)") from None
        raise DataError(f"{label} is not a readable numpy file: {exc}") from None
    except Exception as exc:  # zip errors, truncated files
        raise DataError(f"{label} is not a readable numpy file: {exc}") from None
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{label} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DataError(f"{label} must hold a 2-D (n_samples, dim) array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{label} is empty (shape {arr.shape})")
    if arr.shape[0] < min_rows:
        raise DataError(f"{label} needs at least {min_rows} rows, got shape {arr.shape}")
    if ncols is not None and arr.shape[1] != ncols:
        raise DataError(f"{label} has {arr.shape[1]} columns, expected d = {ncols}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{label} contains NaN or infinite values")
    return arr

"""Files that are never half-written and get the modes the umask gives; input files (JSONL, JSON, CSV) read so that
every problem in them fails loudly with file, line and field."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from io import StringIO
from pathlib import Path
from typing import IO, Any


class DataError(ValueError):
    """A malformed input file; the message names the file, the line and the field."""


# --- modes: what the umask gives, whatever the writer ----------------------------------------------------------------

def current_umask() -> int:
    """The process umask, read at each call (a job may set its own); from /proc where there is one, because
    os.umask can only be read by setting it, and a file another thread created in between would get the wrong mode."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def follow_umask(root: str | os.PathLike) -> None:
    """Give `root` and everything under it the modes a plain mkdir()/open() would have given: 0o777 / 0o666 (plus
    any execute bits a file has) minus the umask. Libraries that write through temporary files ignore the umask:
    mkdtemp makes 0700 directories, and safetensors >= 0.8 writes every weights file as 0600 (tempfile + rename,
    safetensors/safetensors#782), which would leave a model other users of a shared cluster cannot load."""
    umask = current_umask()
    for dirpath, _, filenames in os.walk(root):  # symlinked directories are not entered (followlinks=False)
        os.chmod(dirpath, 0o777 & ~umask)
        for name in filenames:
            file = os.path.join(dirpath, name)
            mode = os.lstat(file).st_mode
            if stat.S_ISREG(mode):  # never chmod through a symlink: its target may be anyone's file
                os.chmod(file, (0o666 | (mode & 0o111)) & ~umask)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file to write whose content replaces `path` whole when the block ends; on an exception `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; outputs are meant to be shared and inspected
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` whole, on failure it is removed.

    What ends up at `path` has the modes the umask gives (follow_umask), whichever library wrote the files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        yield tmp
        follow_umask(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- reading: every problem names the file and the line -------------------------------------------------------------

@contextlib.contextmanager
def open_input(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """`path` opened for reading (binary: decode_line decodes each line so that a bad byte is placed by line and
    column); a missing file, a directory or an unreadable file raises DataError naming it."""
    path = Path(path)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    with f:
        yield f


def _utf8_error(path: Path, lineno: int, line: bytes, start: int) -> DataError:
    """`line[start]` is the first byte that is not UTF-8."""
    column = len(line[:start].decode("utf-8")) + 1  # in characters: all before the first bad byte decode
    return DataError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{line[start]:02x} at column {column}); "
                     "save the file as UTF-8")


def decode_line(path: Path, lineno: int, line: bytes) -> str:
    """One line of `path` as text; bytes that are not UTF-8 raise DataError naming file, line and column."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, lineno, line, e.start) from None
    return text.removeprefix("\ufeff") if lineno == 1 else text  # a byte-order mark some editors write


def read_text(path: str | os.PathLike) -> str:
    """A whole text file (UTF-8), with open_input's and decode_line's errors."""
    path = Path(path)
    with open_input(path) as f:
        data = f.read()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        start = data.rfind(b"\n", 0, e.start) + 1
        end = data.find(b"\n", e.start)
        raise _utf8_error(path, lineno, data[start:] if end < 0 else data[start:end], e.start - start) from None


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's value; bad bytes or bad JSON raise DataError naming the file and the line."""
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def read_json_object(path: str | os.PathLike) -> dict:
    """read_json of a file that must hold one JSON object (a manifest, metrics, a record)."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _no_rows(path: Path, saw_blank: bool, rows: str, layout: str) -> DataError:
    what = "only blank lines" if saw_blank else "empty file"
    return DataError(f"{path}: {what}, expected {rows} ({layout})")


def iter_jsonl(path: str | os.PathLike, *, require: str | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a line that is not UTF-8 or not a JSON object raises DataError
    naming file and line. With `require` (what the rows are, e.g. "problems"), a file without a row is an error
    naming the file, raised once the file has been read to its end."""
    path = Path(path)
    seen = blank = False
    with open_input(path) as f:
        for lineno, raw in enumerate(f, start=1):
            line = decode_line(path, lineno, raw)
            if not line.strip():
                blank = True
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            seen = True
            yield lineno, obj
    if require and not seen:
        raise _no_rows(path, blank, require, "one JSON object per line")


def iter_csv(path: str | os.PathLike, *, require: str | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: value}) for each row of a CSV file with a header line; a row with more or fewer fields
    than the header raises DataError naming file and line, and so does (with `require`) a file without rows."""
    path = Path(path)
    text = read_text(path)
    reader = csv.reader(StringIO(text, newline=""))
    header: list[str] | None = None
    seen = False
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = row
            elif len(row) != len(header):
                raise DataError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}")
            else:
                seen = True
                yield reader.line_num, dict(zip(header, row))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    if header is None:
        raise _no_rows(path, bool(text), require or "a header line", "comma-separated, a header line first")
    if require and not seen:
        raise DataError(f"{path}: no rows under the header, expected {require}")


def require_field(obj: Mapping[str, Any], field: str, kind: type | tuple[type, ...], where: str,
                  non_empty: bool = False) -> Any:
    """obj[field], checked for presence, type and (optionally) non-emptiness; `where` is "file:line"."""
    if field not in obj or obj[field] is None:
        raise DataError(f"{where}: missing field '{field}'")
    value = obj[field]
    if not isinstance(value, kind) or (kind in (int, float, (int, float)) and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field '{field}' must be {names}, got {type(value).__name__}")
    if non_empty and (len(value) == 0 or (isinstance(value, str) and not value.strip())):
        raise DataError(f"{where}: field '{field}' is empty")
    return value


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()

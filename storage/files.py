"""Files that survive interruptions, full disks and power cuts; and the user's text, read with care.

A file is written under a temporary name, synced to disk, then renamed to its final name: a reader
never sees a half-written file under the final name, and after a power cut the name points at
complete data. A disk that fills up ends in one line that says where, how much, and what was kept.
"""

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys


class DiskFull(OSError):
    """No room on the disk for what has to be written."""


def megabytes(n_bytes):
    return f"{n_bytes / 1e6:,.0f} MB"


def disk_full(directory, what, needed=None, kept=""):
    """The one line for a write that does not fit: where, what, how much is needed and free, what was kept."""
    free = shutil.disk_usage(directory).free
    need = f": {megabytes(needed)} needed, {megabytes(free)} free" if needed is not None else ": the disk is full"
    return DiskFull(f"not enough space in {directory} {what}{need}{kept}")


def no_room(error):
    """Whether an OSError is a full disk (or a full quota)."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def check_room(directory, what, needed, kept=""):
    if shutil.disk_usage(directory).free < needed:
        raise disk_full(directory, what, needed, kept)


def synced(f):
    """A file's data on disk, not only in the kernel's cache: a power cut after the rename that follows
    cannot leave a complete-looking file with missing data."""
    f.flush()
    os.fsync(f.fileno())


def fsync_path(path):
    """A folder's entries (new names, renames) on disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def partial_path(path):  # where a file or folder is written before it is renamed to path
    return f"{path}.{os.getpid()}.partial"


def remove_leftovers(directory, of=None):
    """What processes that were killed while they wrote left in directory: files and folders named
    NAME.PID.partial (partial_path's; NAME `of`, if given) whose process is gone (another one may be
    writing its own)."""
    for entry in os.listdir(directory):
        name, _, pid = entry.removesuffix(".partial").rpartition(".")
        if entry.endswith(".partial") and pid.isdigit() and of in (None, name) and not process_alive(int(pid)):
            path = os.path.join(directory, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def process_alive(pid):
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def give_usual_permissions(directory):
    """mkdtemp makes a private folder (0700); a finished one gets what os.mkdir would give."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# Reading the user's text: at most MAX_INPUT_BYTES, UTF-8 checked, JSON Lines line by line.

# 100 MB is some 25 million tokens, far more than anyone scores or trains on at once, and
# `python gpt2.py - < /dev/zero` must not read until the memory runs out.
MAX_INPUT_BYTES = 100_000_000


def source_name(path):  # how messages name what is read: "-" is standard input
    return "standard input" if path == "-" else path


def read_bytes(path):
    """The bytes of a file, or of standard input for "-", read piece by piece so that Ctrl-C stops it,
    and at most MAX_INPUT_BYTES of them."""
    source = source_name(path)
    pieces, size = [], 0
    try:
        with contextlib.nullcontext(sys.stdin.buffer) if path == "-" else open(path, "rb") as f:
            while piece := f.read(1 << 20):
                size += len(piece)
                if size > MAX_INPUT_BYTES:
                    raise ValueError(
                        f"{source} holds more than {megabytes(MAX_INPUT_BYTES)} of text, the most read at once"
                    )
                pieces.append(piece)
    except OSError as e:
        raise ValueError(f"cannot read {source}: {e.strerror}") from None
    return b"".join(pieces)


class NotUTF8(ValueError):
    """A file that is not UTF-8 text."""


def read_utf8(path):
    """The text of a UTF-8 file ("-": standard input)."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotUTF8(
            f"{source_name(path)} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})"
        ) from None


class JsonlError(ValueError):
    """A line of a JSON Lines file is not what it should be."""


def read_jsonl(path, *fields):
    """The objects of a JSON Lines file ("-": standard input) as (line number, object), each checked to
    hold the text fields. Blank lines are skipped. A bad line stops everything with its number."""
    source = source_name(path)
    records = []
    for number, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise JsonlError(
                f"{source} line {number}: not JSON: {e.msg.lower().removesuffix(' at')} at column {e.colno}"
            ) from None
        if not isinstance(record, dict):
            raise JsonlError(f"{source} line {number}: not a JSON object but {type(record).__name__}")
        check_fields(source, number, record, fields)
        records.append((number, record))
    return source, records


def check_fields(source, number, record, fields):
    """Each of the fields in a JSON Lines record, and a string."""
    for field in fields:
        if field not in record:
            raise JsonlError(f'{source} line {number}: no "{field}" key')
        if not isinstance(record[field], str):
            raise JsonlError(f'{source} line {number}: "{field}" is not a string but {type(record[field]).__name__}')

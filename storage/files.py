"""Files that survive interruptions, full disks and power cuts, for download.py and npy_copy.py.

A file is written under a temporary name, synced to disk, then renamed to its final name: a reader
never sees a half-written file under the final name, and after a power cut the name points at
complete data. A disk that fills up ends in one line that says where, how much, and what was kept.
"""

import hashlib
import os
import shutil


class DiskFull(OSError):
    """No room on the disk for what has to be written."""


def megabytes(n_bytes):
    return f"{n_bytes / 1e6:,.0f} MB"


def disk_full(directory, what, needed=None, kept=""):
    """The one line for a write that does not fit: where, what, how much is needed and free, what was kept."""
    free = shutil.disk_usage(directory).free
    need = f": {megabytes(needed)} needed, {megabytes(free)} free" if needed is not None else ": the disk is full"
    return DiskFull(f"not enough space in {directory} {what}{need}{kept}")


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

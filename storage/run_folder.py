"""Files saved together, as a training run saves its model, optimizer and state: all or none of them.

A save writes every file beside its old version as NAME.partial, then commit.json, which lists each
file with its size and sha256, then renames the partials over the old files. commit.json stays: it is
the list of what the last save wrote, checked when the folder is read again, so that a file damaged
or changed since (a flipped byte, a step edited by hand) is found, not trained on.

A save cut short before commit.json was replaced leaves partials that the old commit.json does not
list: finish() removes them, and the previous save is as it was. One cut short after it leaves
partials that it lists: finish() renames them, completing the save.
"""

import json
import os

from .files import fsync_path, sha256_of, synced

COMMIT = "commit.json"


def partial(folder, name):
    return os.path.join(folder, f"{name}.partial")


def commit(folder, names, step):
    """Commit the partials of names (written and synced): the save counts once this returns."""
    files = {}
    for name in names:
        path = partial(folder, name)
        files[name] = {"size": os.path.getsize(path), "sha256": sha256_of(path)}
    fsync_path(folder)
    with open(partial(folder, COMMIT), "w") as f:
        json.dump({"step": step, "files": files}, f, indent=1)
        synced(f)
    os.replace(partial(folder, COMMIT), os.path.join(folder, COMMIT))  # the save counts from here
    for name in names:
        os.replace(partial(folder, name), os.path.join(folder, name))
    fsync_path(folder)


def read_commit(folder):
    """What the last save wrote: {"step", "files": {name: {"size", "sha256"}}}, or None if none."""
    path = os.path.join(folder, COMMIT)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        files = saved["files"]
        if not isinstance(saved["step"], int) or not all(
            isinstance(entry["size"], int) and isinstance(entry["sha256"], str) for entry in files.values()
        ):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{path} is damaged: the list of what the last save wrote cannot be read") from None
    return saved


def finish(folder):
    """Complete a save that was committed but cut short, or drop the partials of one that was not."""
    saved = read_commit(folder)
    listed = saved["files"] if saved else {}
    for entry in sorted(os.listdir(folder)):
        if not entry.endswith(".partial"):
            continue
        name, path = entry.removesuffix(".partial"), os.path.join(folder, entry)
        if name in listed and matches(path, listed[name]):
            os.replace(path, os.path.join(folder, name))
        else:
            os.remove(path)
    fsync_path(folder)


def matches(path, entry):
    return os.path.getsize(path) == entry["size"] and sha256_of(path) == entry["sha256"]


def check(folder, saved):
    """Every file the last save wrote is there, of its size and checksum: else a ValueError that names it."""
    for name, entry in saved["files"].items():
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            problem = "is missing"
        elif os.path.getsize(path) != entry["size"]:
            problem = f"has {os.path.getsize(path):,} bytes, not the {entry['size']:,} it was saved with"
        elif sha256_of(path) != entry["sha256"]:
            problem = "is not what was saved (its sha256 differs): damaged, or changed since"
        else:
            continue
        raise ValueError(f"{path} {problem} (the save at step {saved['step']})")


def aside_name(folder):
    """Where move_aside would put the folder: FOLDER.previous-N, the first N free."""
    base, n = os.path.normpath(os.path.abspath(folder)), 1
    while os.path.exists(f"{base}.previous-{n}"):
        n += 1
    return f"{base}.previous-{n}"


def move_aside(folder):
    """Rename the folder to aside_name(folder); returns the new name."""
    aside = aside_name(folder)
    os.rename(folder, aside)
    return aside


def remove_partials(folder):
    """The partials of a save that failed (a full disk): the last save stays as it was."""
    for entry in os.listdir(folder):
        if entry.endswith(".partial"):
            os.remove(os.path.join(folder, entry))

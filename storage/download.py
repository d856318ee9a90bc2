"""Fetching files over HTTP, robustly: retries, resuming, and plain words when it fails.

Each file goes to a `.{name}.part` file beside its final name and is renamed only once complete, so a
failed or interrupted download never leaves a file that looks finished; the next try, or the next
run, resumes the `.part` file with an HTTP Range request. Failed connections and 5xx answers are
retried with back-off by urllib3; a body shorter than its Content-Length is refused by urllib3 too
(version 2 enforces the length), and resumed from where it broke off while it makes progress.
"""

import os
import re
import shutil
import sys
import time

from .files import check_room, disk_full, fsync_path, megabytes, no_room, sha256_of, synced

CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0  # seconds: to connect, and between two pieces of a response
ATTEMPTS = 4  # tries of one file: failed connections, 5xx answers, and transfers that break off midway
BACKOFF = 1.0  # seconds before the second try, doubled before each later one


class NotFound(OSError):
    """The server has no such file (HTTP 404)."""


def part_path(path):
    """Where the bytes of path gather until it is complete."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.part")


def http_session():
    """A requests session whose connection attempts and 5xx answers are retried with back-off by
    urllib3's Retry (a transfer that breaks off midway is resumed by download_file)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(total=ATTEMPTS - 1, backoff_factor=BACKOFF, status_forcelist=(500, 502, 503, 504))
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


def announced_sha256(response):
    """The sha256 a server vouches for, if any: the HuggingFace hub sends it as the ETag of large files,
    or as X-Linked-Etag on the redirect to their storage."""
    for answer in (*response.history, response):
        for header in ("X-Linked-Etag", "ETag"):
            value = answer.headers.get(header, "").removeprefix("W/").strip('"')
            if re.fullmatch(r"[0-9a-f]{64}", value):
                return value
    return None


def kept_note(part, have):
    """What a full disk's message adds about the bytes kept for resuming, if any."""
    return f"; the {megabytes(have)} downloaded so far stay in {os.path.basename(part)} to resume from" if have else ""


def fetch(session, url, path):
    """Append the rest of url to path's .part file: ask for the bytes it lacks (an HTTP Range request),
    or start over where the server sends the whole file. Returns the sha256 the server vouches for."""
    from tqdm import tqdm

    part = part_path(path)
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), headers=headers) as response:
        if response.status_code == 416:  # asked past the end: the partial file is not what the server has
            os.remove(part)
            return fetch(session, url, path)
        response.raise_for_status()
        if response.status_code != 206:  # the server ignored the Range header: start over
            have = 0
        length = response.headers.get("content-length")
        if length is not None:
            check_room(os.path.dirname(path), f"for {os.path.basename(path)}", int(length), kept_note(part, have))
        total = have + int(length) if length is not None else None
        try:
            with (
                open(part, "ab" if have else "wb") as f,
                tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=os.path.basename(url), file=sys.stderr
                ) as bar,
            ):
                for chunk in response.iter_content(chunk_size=1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
                synced(f)
        except OSError as e:  # what reached the disk is a prefix of the file: the next run resumes it
            if not no_room(e):
                raise
            kept = kept_note(part, os.path.getsize(part))
            raise disk_full(os.path.dirname(path), f"for {os.path.basename(path)}", kept=kept) from None
        return announced_sha256(response)


def download_file(session, url, path, expected_sha256=None, hint=None):
    """Download url to path, resuming a transfer that breaks off while it makes progress. The file must
    have expected_sha256, or else the sha256 the server vouches for, if it does. hint: what to do when
    it fails, for the error."""
    import requests

    name, part = os.path.basename(path), part_path(path)
    hint = hint or "check the connection (or a proxy)"
    for attempt in range(1, ATTEMPTS + 1):
        had = os.path.getsize(part) if os.path.exists(part) else 0
        try:
            announced = fetch(session, url, path)
            break
        except (requests.HTTPError, requests.exceptions.RetryError) as e:  # an answer no retry will change
            error = NotFound if getattr(e.response, "status_code", None) == 404 else OSError
            raise error(f"could not download {name} from {url}: {plain_cause(e)}; {hint}") from None
        except requests.RequestException as e:
            progressed = os.path.exists(part) and os.path.getsize(part) > had
            if not progressed or attempt == ATTEMPTS:  # (connection failures were retried by urllib3 already)
                raise OSError(f"could not download {name} from {url}: {plain_cause(e)}; {hint}") from None
            time.sleep(BACKOFF * 2 ** (attempt - 1))  # it broke off midway: resume after a pause
    finish(path, url, expected_sha256 or announced)


def plain_cause(error):
    """What went wrong with a request, in a few plain words instead of urllib3's nested reprs."""
    import requests

    chain = repr(error)  # urllib3's errors are wrapped, and named only in the text
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"the server answered HTTP {error.response.status_code} {error.response.reason}"
    if isinstance(error, requests.exceptions.RetryError):
        return "the server kept answering with an error (HTTP 5xx)"
    if "NameResolution" in chain or "getaddrinfo" in chain or "Name or service not known" in chain:
        return "its host name could not be looked up (no network, or no DNS)"
    if isinstance(error, requests.Timeout) or "timed out" in chain or "TimeoutError" in chain:
        return "the server did not answer in time"
    if "refused" in chain.lower():
        return "the connection was refused"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):  # urllib3: fewer bytes than Content-Length
        return "the transfer broke off before the end"
    return f"the connection failed ({type(error).__name__})"


def finish(path, source, expected_sha256=None):
    """Check a complete .part file and give it its final name."""
    part = part_path(path)
    if expected_sha256 and sha256_of(part) != expected_sha256:
        os.remove(part)
        raise OSError(f"{source} is not the expected {os.path.basename(path)} (its sha256 differs); check the source")
    os.replace(part, path)
    fsync_path(os.path.dirname(path))


def copy_file(source, path, expected_sha256=None):
    """download_file for a source that is a local file: the same .part file, checks and rename."""
    try:
        shutil.copyfile(source, part_path(path))
    except OSError as e:
        raise OSError(f"could not copy {source} (GPT2_BASE_URL is a folder): {e.strerror}") from None
    finish(path, source, expected_sha256)


def download_files(base, names, directory, sha256=None, hint=None):
    """{base}/{name} into directory/{name} for each name: base is a URL, or a folder (a path or file://).
    sha256: {name: the sha256 the file must have}, for the files that have a known one; hint: what to
    do when a download fails."""
    sha256 = sha256 or {}
    os.makedirs(directory, exist_ok=True)
    if base.startswith("file://") or "://" not in base:
        for name in names:
            copy_file(os.path.join(base.removeprefix("file://"), name), os.path.join(directory, name), sha256.get(name))
        return
    with http_session() as session:
        for name in names:
            download_file(session, f"{base}/{name}", os.path.join(directory, name), sha256.get(name), hint)

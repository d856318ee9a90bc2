"""Get OpenAI's GPT-2 files and turn their TensorFlow checkpoint into NumPy arrays, without TensorFlow.

The first load of a model downloads its seven files into models_dir/model_size and converts the
checkpoint (read by checkpoint.py, every tensor's checksum verified) into one .npy file per tensor, in
models_dir/model_size/npy. Every later load checks the files cheaply and memory-maps those .npy
files: no copy, a few milliseconds. A missing or damaged file is downloaded again; a file that stays
wrong is named in the error, with what to do. Interruptions, full disks and read-only folders end in
one line that says what happened, and leave nothing half-written behind."""

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import checkpoint
from checkpoint import CheckpointError
from encoder import get_encoder

MODEL_SIZES = ("124M", "355M", "774M", "1558M")
FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"  # GPT2_BASE_URL overrides it
CHECKPOINT_DATA = "model.ckpt.data-00000-of-00001"
CHECKPOINT_FILES = (CHECKPOINT_DATA, "model.ckpt.index")  # what the .npy copy is made from
TOKENIZER_SHA256 = {  # the same two files serve every model size
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0  # seconds: to connect, and between two pieces of a response
ATTEMPTS = 4  # tries of one file: failed connections, 5xx answers, and transfers that break off midway
BACKOFF = 1.0  # seconds before the second try, doubled before each later one
CONVERTED_DIR = "npy"
LOCK_NOTICE_SECONDS = 2.0  # waiting longer than this for another process's lock is said on stderr
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 3  # a converted copy whose manifest has another format (or another layout of the arrays) is rebuilt


class DiskFull(OSError):
    """No room on the disk for what has to be written."""


def megabytes(n_bytes):
    return f"{n_bytes / 1e6:,.0f} MB"


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


def check_model_size(model_size):
    if model_size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {model_size!r}: choose one of {', '.join(MODEL_SIZES)}")


def give_usual_permissions(directory):
    """mkdtemp makes a private folder (0700); a finished one gets what os.mkdir would give."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)


class IncompleteDownload(OSError):
    """The server sent fewer bytes than it announced."""


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


def fetch(session, url, part_path):
    """Append the rest of url to part_path: ask for the bytes it lacks (an HTTP Range request), or
    start over where the server sends the whole file. Raises if fewer bytes came than announced."""
    from tqdm import tqdm

    have = os.path.getsize(part_path) if os.path.exists(part_path) else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), headers=headers) as response:
        if response.status_code == 416:  # asked past the end: the partial file is not what the server has
            os.remove(part_path)
            return fetch(session, url, part_path)
        response.raise_for_status()
        if response.status_code != 206:  # the server ignored the Range header: start over
            have = 0
        length = response.headers.get("content-length")
        total = have + int(length) if length is not None else None
        if length is not None and shutil.disk_usage(os.path.dirname(part_path)).free < int(length):
            raise disk_full(part_path, have, int(length))
        try:
            with (
                open(part_path, "ab" if have else "wb") as f,
                tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=os.path.basename(url), file=sys.stderr
                ) as bar,
            ):
                for chunk in response.iter_content(chunk_size=1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
                synced(f)
        except OSError as e:  # what reached the disk is a prefix of the file: the next run resumes it
            if e.errno != errno.ENOSPC:
                raise
            raise disk_full(part_path, os.path.getsize(part_path), None) from None
    size = os.path.getsize(part_path)
    if total is not None and size != total:
        raise IncompleteDownload(f"got {size} of {total} bytes")


def disk_full(part_path, have, needed):
    """The one line for a download that does not fit: where, how much, and what was kept."""
    directory, name = os.path.split(part_path)
    free = shutil.disk_usage(directory).free
    need = f"{megabytes(needed)} more needed, {megabytes(free)} free" if needed is not None else "the disk is full"
    kept = f"; the {megabytes(have)} downloaded so far stay in {name} to resume from" if have else ""
    return DiskFull(f"not enough space in {directory} for {name.removeprefix('.').removesuffix('.part')}: {need}{kept}")


def download_file(session, url, path):
    """Download url to path. The bytes go to path's .part file beside it, renamed to path only once
    complete and checked, so a failed or interrupted download never leaves a file that looks finished;
    the next try, or the next run, resumes the .part file."""
    import requests

    name = os.path.basename(path)
    part_path = os.path.join(os.path.dirname(path), f".{name}.part")
    for attempt in range(1, ATTEMPTS + 1):
        had = os.path.getsize(part_path) if os.path.exists(part_path) else 0
        try:
            fetch(session, url, part_path)
            break
        except (requests.HTTPError, requests.exceptions.RetryError) as e:  # an answer no retry will change
            raise OSError(f"could not download {name} from {url}: {plain_cause(e)}; {WHAT_TO_DO}") from None
        except (requests.RequestException, IncompleteDownload) as e:
            progressed = os.path.exists(part_path) and os.path.getsize(part_path) > had
            if not progressed or attempt == ATTEMPTS:  # (connection failures were retried by urllib3 already)
                raise OSError(f"could not download {name} from {url}: {plain_cause(e)}; {WHAT_TO_DO}") from None
            time.sleep(BACKOFF * 2 ** (attempt - 1))  # it broke off midway: resume after a pause
    finish(part_path, path, url)


WHAT_TO_DO = "check the connection (or a proxy), or set GPT2_BASE_URL to a mirror or to a folder with the files"


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
    if isinstance(error, IncompleteDownload):
        return f"the transfer broke off ({error})"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "the transfer broke off before the end"
    return f"the connection failed ({type(error).__name__})"


def finish(part_path, path, source):
    """Check a complete .part file and give it its final name."""
    name = os.path.basename(path)
    expected_sha256 = TOKENIZER_SHA256.get(name)
    if expected_sha256 and sha256_of(part_path) != expected_sha256:
        os.remove(part_path)
        raise OSError(f"{source} is not OpenAI's {name} (its sha256 differs); check GPT2_BASE_URL")
    os.replace(part_path, path)
    fsync_path(os.path.dirname(path))


def copy_file(source, path):
    """download_file for GPT2_BASE_URL naming a folder: the same .part file, checks and rename."""
    part_path = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.part")
    try:
        shutil.copyfile(source, part_path)
    except OSError as e:
        raise OSError(f"could not copy {source} (GPT2_BASE_URL is a folder): {e.strerror}") from None
    finish(part_path, path, source)


def download_gpt2_files(model_size, model_dir, files=FILES):
    """OpenAI's files from GPT2_BASE_URL: a URL ({base}/{model_size}/{file}), or a folder laid out the same."""
    check_model_size(model_size)
    base = os.environ.get("GPT2_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
    os.makedirs(model_dir, exist_ok=True)
    if base.startswith("file://") or "://" not in base:
        for name in files:
            copy_file(os.path.join(base.removeprefix("file://"), model_size, name), os.path.join(model_dir, name))
        return
    with http_session() as session:
        for name in files:
            download_file(session, f"{base}/{model_size}/{name}", os.path.join(model_dir, name))


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_key(tf_name):
    """OpenAI's variable name -> our flat key: "model/h3/attn/c_attn/w" -> "blocks.3.attn.c_attn.w"."""
    parts = tf_name.removeprefix("model/").split("/")
    if parts[0].startswith("h") and parts[0][1:].isdigit():
        parts = ["blocks", parts[0][1:]] + parts[1:]
    return ".".join(parts)


def expected_shapes(hparams):
    """Flat key -> shape of every tensor of a GPT-2 with these hyperparameters."""
    n_vocab, n_ctx, n_embd = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"]
    shapes = {"wte": (n_vocab, n_embd), "wpe": (n_ctx, n_embd), "ln_f.g": (n_embd,), "ln_f.b": (n_embd,)}
    block = {
        "attn.c_attn.w": (n_embd, 3 * n_embd),
        "attn.c_attn.b": (3 * n_embd,),
        "attn.c_proj.w": (n_embd, n_embd),
        "attn.c_proj.b": (n_embd,),
        "ln_1.g": (n_embd,),
        "ln_1.b": (n_embd,),
        "ln_2.g": (n_embd,),
        "ln_2.b": (n_embd,),
        "mlp.c_fc.w": (n_embd, 4 * n_embd),
        "mlp.c_fc.b": (4 * n_embd,),
        "mlp.c_proj.w": (4 * n_embd, n_embd),
        "mlp.c_proj.b": (n_embd,),
    }
    for i in range(hparams["n_layer"]):
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
    return shapes


def nest(flat):
    """{"blocks.0.ln_1.g": x, "wte": y} -> {"blocks": [{"ln_1": {"g": x}}], "wte": y}"""
    params = {}
    for key, value in flat.items():
        node = params
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    params["blocks"] = [params["blocks"][str(i)] for i in range(len(params["blocks"]))]
    return params


def source_fingerprint(model_dir):
    """What a converted copy was made from, by content, which a copy of the folder keeps (cp -r and sync
    tools change modification times): the index file's sha256 (a few kilobytes that hold every tensor's
    offset, size and crc32c) and the data file's size."""
    return {
        "model.ckpt.index": sha256_of(os.path.join(model_dir, "model.ckpt.index")),
        CHECKPOINT_DATA: os.path.getsize(os.path.join(model_dir, CHECKPOINT_DATA)),
    }


def file_sizes(directory, names):
    return {name: os.path.getsize(os.path.join(directory, name)) for name in names}


def read_checkpoint(ckpt_path):
    """Yield (flat key, float32 array) for each tensor of OpenAI's TensorFlow checkpoint, one at a time,
    each checked against its crc32c (checkpoint.py reads the format)."""
    for name, array in checkpoint.read_tensors(ckpt_path):
        if array.ndim == 3 and array.shape[0] == 1:  # OpenAI stores conv weights as [1, n_in, n_out]
            array = array[0]
        yield tensor_key(name), array


def convert_checkpoint(model_dir, hparams):
    """Write every tensor of the TensorFlow checkpoint as float32 .npy into model_dir/npy, with a
    manifest of what it was made from. Built in a temporary folder and renamed at the end. Where the
    disk has no room for the new copy beside an old one, the old one goes first: it is out of date,
    and the checkpoint can always make it again."""
    shapes = expected_shapes(hparams)
    needed = os.path.getsize(os.path.join(model_dir, CHECKPOINT_DATA))  # the arrays, as many bytes as the data
    if shutil.disk_usage(model_dir).free < needed:
        shutil.rmtree(os.path.join(model_dir, CONVERTED_DIR), ignore_errors=True)
    free = shutil.disk_usage(model_dir).free
    if free < needed:
        raise DiskFull(
            f"not enough space in {model_dir} to convert the checkpoint: {megabytes(needed)} needed, {megabytes(free)} free"
        )
    tmp_dir = tempfile.mkdtemp(dir=model_dir, prefix=f".{CONVERTED_DIR}.")
    try:
        for key, array in read_checkpoint(os.path.join(model_dir, "model.ckpt")):
            if array.shape != shapes.get(key):
                raise CheckpointError(
                    f"the checkpoint in {model_dir} has {key} of shape {array.shape}, hparams.json asks for {shapes.get(key)}"
                )
            if key.endswith(".w") or key == "wte":
                # Same [n_in, n_out] array, stored column by column: generating one token multiplies a
                # vector by each matrix, and BLAS streams that product faster along contiguous columns.
                # wte too, whose transpose is the output layer's matrix: a token's row is then read
                # scattered, but that is one row per token against the whole matrix per token.
                array = np.asfortranarray(array)
            try:
                with open(os.path.join(tmp_dir, f"{key}.npy"), "wb") as f:
                    np.save(f, array)
                    synced(f)
            except OSError as e:  # a full disk: NumPy's short write ("N requested and M written") has no errno
                if e.errno not in (errno.ENOSPC, errno.EDQUOT, None):
                    raise
                raise DiskFull(
                    f"the disk of {model_dir} filled up while converting the checkpoint: {megabytes(needed)} were needed"
                ) from None
        tensor_files = [f"{key}.npy" for key in shapes]
        missing = [name for name in tensor_files if not os.path.exists(os.path.join(tmp_dir, name))]
        if missing:
            raise CheckpointError(
                f"the checkpoint in {model_dir} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
            )
        manifest = {
            "format": MANIFEST_FORMAT,
            "source": source_fingerprint(model_dir),
            "tensors": file_sizes(tmp_dir, tensor_files),
        }
        with open(os.path.join(tmp_dir, MANIFEST), "w") as f:
            json.dump(manifest, f)
            synced(f)
        fsync_path(tmp_dir)  # every file and the folder on disk before the rename makes the copy look complete
        converted_dir = os.path.join(model_dir, CONVERTED_DIR)
        shutil.rmtree(converted_dir, ignore_errors=True)
        give_usual_permissions(tmp_dir)
        os.rename(tmp_dir, converted_dir)
        fsync_path(model_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def load_converted(model_dir, hparams):
    """Memory-map the .npy copy; None if it is missing, out of date or damaged."""
    converted_dir = os.path.join(model_dir, CONVERTED_DIR)
    shapes = expected_shapes(hparams)
    try:
        with open(os.path.join(converted_dir, MANIFEST)) as f:
            manifest = json.load(f)
        if manifest.get("format") != MANIFEST_FORMAT or manifest["source"] != source_fingerprint(model_dir):
            return None
        if manifest["tensors"] != file_sizes(converted_dir, [f"{key}.npy" for key in shapes]):
            return None
        # np.asarray drops the np.memmap subclass, whose bookkeeping slows every operation, not the mapping.
        flat = {
            key: np.asarray(np.load(os.path.join(converted_dir, f"{key}.npy"), mmap_mode="r", allow_pickle=False))
            for key in shapes
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(flat[key].shape != shape or flat[key].dtype != np.float32 for key, shape in shapes.items()):
        return None
    return nest(flat)


def load_hparams(model_dir):
    with open(os.path.join(model_dir, "hparams.json")) as f:
        hparams = json.load(f)
    return {key: int(hparams[key]) for key in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")}


def damaged_files(model_dir):
    """{name: what is wrong} for OpenAI's seven files in model_dir, from checks that cost milliseconds:
    each file is there, the tokenizer files have OpenAI's sha256, hparams.json is valid, and the
    checkpoint data has the size that hparams.json implies (4 bytes per parameter)."""
    problems = {name: "missing" for name in FILES if not os.path.isfile(os.path.join(model_dir, name))}
    for name, sha256 in TOKENIZER_SHA256.items():
        if name not in problems and sha256_of(os.path.join(model_dir, name)) != sha256:
            problems[name] = "not OpenAI's file (its sha256 differs)"
    if "hparams.json" not in problems:
        try:
            hparams = load_hparams(model_dir)
        except (ValueError, KeyError, TypeError) as e:
            problems["hparams.json"] = f"not valid ({type(e).__name__}: {e})"
        else:
            size = (
                os.path.getsize(os.path.join(model_dir, CHECKPOINT_DATA)) if CHECKPOINT_DATA not in problems else None
            )
            expected = 4 * sum(int(np.prod(shape)) for shape in expected_shapes(hparams).values())
            if size is not None and size != expected:
                problems[CHECKPOINT_DATA] = f"{size} bytes where hparams.json implies {expected}"
    return problems


def leftovers(model_dir):
    """Temporary folders of conversions that were killed (SIGKILL, a power cut) before they could clean up.
    (Partly downloaded .part files are no litter: the next download resumes them.)"""
    try:
        return [name for name in os.listdir(model_dir) if name.startswith(f".{CONVERTED_DIR}.")]
    except OSError:
        return []


@contextlib.contextmanager
def model_lock(model_dir):
    """The folder's lock file, held while downloading and converting, so that two processes end with one
    correct copy: the second waits (and says so), then finds the work done. Holding it also proves that
    no live process owns the leftovers of a conversion, so they are removed then."""
    from filelock import FileLock, Timeout

    try:
        os.makedirs(model_dir, exist_ok=True)
        lock = FileLock(os.path.join(model_dir, ".lock"))
        try:
            lock.acquire(timeout=LOCK_NOTICE_SECONDS)
        except Timeout:
            print(f"waiting for another process that is downloading or converting {model_dir}", file=sys.stderr)
            lock.acquire()
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise OSError(
            f"{model_dir} is read-only and has no usable converted copy; "
            "run once where it is writable, or point --models_dir at a writable copy"
        ) from None
    try:
        for name in leftovers(model_dir):
            shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)
        yield
    finally:
        lock.release()


def repair(model_size, model_dir):
    """Download what is missing or damaged, then convert the checkpoint if there is no valid copy,
    under the folder's lock."""
    with model_lock(model_dir):
        fetched = set()
        while problems := damaged_files(model_dir):
            again = fetched & set(problems)
            if again:  # downloaded afresh and still wrong: the source is at fault
                name = sorted(again)[0]
                raise OSError(
                    f"{model_dir}/{name} is {problems[name]} even after downloading it again; "
                    "check GPT2_BASE_URL or the network, delete the file and run again"
                )
            for name, reason in problems.items():
                if reason != "missing":  # a first download shows only its progress bars
                    print(f"{model_dir}/{name}: {reason}; downloading it again", file=sys.stderr)
            download_gpt2_files(model_size, model_dir, sorted(problems))
            fetched |= set(problems)
        hparams = load_hparams(model_dir)
        if load_converted(model_dir, hparams) is not None:
            return
        if os.path.isdir(os.path.join(model_dir, CONVERTED_DIR)):
            print(
                f"The converted copy in {model_dir}/{CONVERTED_DIR} is out of date or damaged: rebuilding it.",
                file=sys.stderr,
            )
        else:
            print(f"Converting the checkpoint in {model_dir} to NumPy arrays (only once).", file=sys.stderr)
        for attempt in (1, 2):
            try:
                return convert_checkpoint(model_dir, hparams)
            except CheckpointError as e:
                if attempt == 2 or fetched >= set(CHECKPOINT_FILES):
                    raise CheckpointError(f"{e}, even as just downloaded; delete {model_dir} and run again") from None
                print(f"{e}: downloading the checkpoint again", file=sys.stderr)
                download_gpt2_files(model_size, model_dir, [*CHECKPOINT_FILES, "model.ckpt.meta"])


def load_encoder_hparams_and_params(model_size, models_dir):
    """(encoder, hparams, params) of one of OpenAI's GPT-2 models, downloading what is missing."""
    check_model_size(model_size)  # before any path is built from it
    model_dir = os.path.join(models_dir, model_size)
    if damaged_files(model_dir) or (leftovers(model_dir) and os.access(model_dir, os.W_OK)):
        repair(model_size, model_dir)
    hparams = load_hparams(model_dir)
    params = load_converted(model_dir, hparams)
    if params is None:
        repair(model_size, model_dir)  # converts the checkpoint
        params = load_converted(model_dir, hparams)
        if params is None:
            raise OSError(f"could not read back the converted copy in {model_dir}/{CONVERTED_DIR}")
    return get_encoder(model_size, models_dir), hparams, params

"""Downloads (download.py) and the repair of damaged model folders, against a local HTTP server that
misbehaves on request (model_server.py)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import REPO_DIR, SMALL_HPARAMS, assert_same_params, closed_port_url, load, start_gpt2

import utils
from storage import download

DATA = utils.CHECKPOINT_DATA


def final_names(model_dir):
    return set(os.listdir(model_dir) if model_dir.exists() else []) & set(utils.FILES)


# Downloads into an empty folder


@pytest.mark.slow
def test_downloads_a_complete_model(served, tmp_path, small_params):
    _, hparams, params = load(tmp_path)
    assert hparams == SMALL_HPARAMS
    assert_same_params(params, small_params)
    assert final_names(tmp_path / "124M") == set(utils.FILES)
    assert all(len(served.hits(name)) == 1 for name in utils.FILES)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "124M" / "hparams.json").st_mode & 0o777 == 0o666 & ~umask
    assert os.stat(tmp_path / "124M" / "npy").st_mode & 0o777 == 0o777 & ~umask


def test_connection_dropped_halfway_is_resumed(served, tmp_path, small_params):
    served.modes[DATA] = "drop_once"
    assert_same_params(load(tmp_path)[2], small_params)
    first, second = served.hits(DATA)
    assert "Range" not in first
    resumed_at = int(second["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= os.path.getsize(tmp_path / "124M" / DATA) // 2  # what had arrived was kept


def test_server_errors_are_retried(served, tmp_path, small_params):
    served.modes["hparams.json"] = "500_twice"
    assert_same_params(load(tmp_path)[2], small_params)
    assert len(served.hits("hparams.json")) == 3


def test_404_is_a_clear_error(served, tmp_path):
    served.modes["checkpoint"] = "404"
    with pytest.raises(
        OSError,
        match=f"could not download checkpoint from {served.url}/124M/checkpoint: the server answered HTTP 404 Not Found; check the connection",
    ):
        load(tmp_path)
    assert "checkpoint" not in final_names(tmp_path / "124M")


@pytest.mark.slow
def test_partial_file_is_resumed_on_the_next_run(served, tmp_path, small_models_dir, small_params):
    model_dir = tmp_path / "124M"
    model_dir.mkdir()
    data = (small_models_dir / "124M" / DATA).read_bytes()
    (model_dir / f".{DATA}.part").write_bytes(data[:1000])  # left by an interrupted run
    assert_same_params(load(tmp_path)[2], small_params)
    assert served.hits(DATA)[0]["Range"] == "bytes=1000-"


def test_server_that_ignores_range_restarts_the_file(served, tmp_path, small_models_dir, small_params):
    model_dir = tmp_path / "124M"
    model_dir.mkdir()
    (model_dir / f".{DATA}.part").write_bytes(b"x" * 1000)  # would corrupt the file if appended to
    served.modes[DATA] = "ignore_range"
    assert_same_params(load(tmp_path)[2], small_params)
    assert (model_dir / DATA).read_bytes() == (small_models_dir / "124M" / DATA).read_bytes()


def test_file_shorter_than_content_length_is_not_kept(served, tmp_path):
    """urllib3 (2 and later) refuses a body shorter than its Content-Length: that is the check."""
    served.modes[DATA] = "short"  # every answer stops halfway
    with pytest.raises(OSError, match=f"could not download {DATA} from .*: the transfer broke off before the end"):
        load(tmp_path)
    assert DATA not in final_names(tmp_path / "124M")
    assert len(served.hits(DATA)) == download.ATTEMPTS  # resumed while it made progress, then gave up


@pytest.mark.slow
def test_server_slower_than_the_timeout(served, tmp_path):
    served.modes["hparams.json"] = "slow"
    start = time.monotonic()
    with pytest.raises(OSError, match="could not download hparams.json .*: the server did not answer in time"):
        load(tmp_path)
    assert time.monotonic() - start < 15
    assert "hparams.json" not in final_names(tmp_path / "124M")


def test_tokenizer_file_with_wrong_sha256_is_refused(served, tmp_path):
    served.modes["vocab.bpe"] = "garbage"
    with pytest.raises(OSError, match="is not the expected vocab.bpe \\(its sha256 differs\\)"):
        load(tmp_path)
    assert "vocab.bpe" not in final_names(tmp_path / "124M")


# Damaged folders: repaired from the server, or named in the error


@pytest.mark.parametrize(
    "damage, file",
    [
        ("delete", "model.ckpt.meta"),
        ("truncate", DATA),
        ("not json", "hparams.json"),
        ("edit", "encoder.json"),
        ("edit", "vocab.bpe"),
    ],
)
def test_damaged_file_is_downloaded_again(served, models_copy, small_params, damage, file, capsys):
    path = models_copy / "124M" / file
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        os.truncate(path, os.path.getsize(path) - 4096)
    elif damage == "not json":
        path.write_text("{oops")
    elif damage == "edit":
        path.write_bytes(path.read_bytes().replace(b"a", b"b", 1))
    _, _, params = load(models_copy)
    assert_same_params(params, small_params)
    assert [len(served.hits(name)) for name in utils.FILES] == [name == file for name in utils.FILES]
    if damage != "delete":
        assert f"{file}: " in capsys.readouterr().err  # says what was wrong


def test_unreadable_checkpoint_index_is_downloaded_again(served, models_copy, small_params, capsys):
    index = models_copy / "124M" / "model.ckpt.index"
    index.write_bytes(b"\0" * os.path.getsize(index))  # same size, so only reading it shows the damage
    assert_same_params(load(models_copy)[2], small_params)
    assert len(served.hits("model.ckpt.index")) == 1
    assert "model.ckpt.index is not a checkpoint index (no magic number at its end)" in capsys.readouterr().err


def test_checkpoint_unreadable_even_after_downloading_it_again(served, models_copy):
    served.modes["model.ckpt.index"] = "garbage"
    index = models_copy / "124M" / "model.ckpt.index"
    index.write_bytes(b"\0" * os.path.getsize(index))
    with pytest.raises(utils.CheckpointError, match="even as just downloaded; delete .*124M and run again"):
        load(models_copy)
    assert len(served.hits("model.ckpt.index")) == 1


def test_damaged_file_and_no_network_says_which_and_how(models_copy, monkeypatch, fast_retries):
    base = closed_port_url()
    monkeypatch.setenv("GPT2_BASE_URL", base)
    (models_copy / "124M" / "hparams.json").write_text("{oops")
    with pytest.raises(OSError, match=f"could not download hparams.json from {base}/124M/hparams.json"):
        load(models_copy)


def test_connection_refused_and_no_dns_say_so_and_what_to_do(tmp_path, monkeypatch, fast_retries):
    monkeypatch.setattr(download, "BACKOFF", 0)
    base = closed_port_url()
    monkeypatch.setenv("GPT2_BASE_URL", base)
    with pytest.raises(OSError) as refused:
        load(tmp_path)
    assert not (tmp_path / "124M").exists()  # the failed first download leaves no folder behind
    assert str(refused.value) == (
        f"could not download checkpoint from {base}/124M/checkpoint: the connection was refused; "
        "check the connection (or a proxy), or set GPT2_BASE_URL to a mirror or to a folder with the files"
    )

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)  # as on a machine without network: no lookup leaves it
    monkeypatch.setenv("GPT2_BASE_URL", "https://mirror.example/gpt-2/models")
    with pytest.raises(
        OSError,
        match="could not download checkpoint from https://mirror.example/gpt-2/models/124M/checkpoint: its host name could not be looked up \\(no network, or no DNS\\); check the connection",
    ):
        load(tmp_path)


def test_base_url_can_be_a_folder(small_models_dir, tmp_path, monkeypatch, small_params):
    monkeypatch.setenv("GPT2_BASE_URL", str(small_models_dir))
    assert_same_params(load(tmp_path)[2], small_params)
    monkeypatch.setenv("GPT2_BASE_URL", f"file://{tmp_path / 'nowhere'}")
    with pytest.raises(OSError, match="could not copy .*nowhere/124M/checkpoint \\(GPT2_BASE_URL is a folder\\)"):
        load(tmp_path / "other")


def test_file_still_wrong_after_downloading_again(served, models_copy):
    served.modes["hparams.json"] = "garbage"
    (models_copy / "124M" / "hparams.json").write_text("{oops")
    with pytest.raises(OSError, match=r"hparams\.json is not valid .* even after downloading it again"):
        load(models_copy)


def test_unknown_model_size_is_not_a_path(served, tmp_path):
    for model_size in ("../124M", "124M/../../x", "/etc"):
        with pytest.raises(ValueError, match="unknown model size"):
            load(tmp_path, model_size)
    assert os.listdir(tmp_path) == [] and served.requests == []


# Several processes, interruptions


def start_loading(models_dir, server, *cli_args):
    """A new process loading the model (or running `python gpt2.py CLI_ARGS...`) from the server."""
    env = {**os.environ, "GPT2_BASE_URL": server.url}
    if cli_args:
        return start_gpt2(*cli_args, env=env)
    code = f"import utils; utils.load_encoder_hparams_and_params('124M', {str(models_dir)!r})"
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_part(model_dir, size, timeout=60):
    part = model_dir / f".{DATA}.part"
    end = time.monotonic() + timeout
    while not (part.exists() and part.stat().st_size >= size):
        assert time.monotonic() < end, "the download did not start"
        time.sleep(0.01)


@pytest.mark.slow
def test_two_processes_loading_the_same_missing_model(model_server, tmp_path, small_params):
    model_server.modes[DATA] = "throttle"
    first, second = start_loading(tmp_path, model_server), start_loading(tmp_path, model_server)
    for process in (first, second):
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    assert all(len(model_server.hits(name)) == 1 for name in utils.FILES)  # one download, one copy
    assert_same_params(load(tmp_path)[2], small_params)


@pytest.mark.slow
def test_killed_download_resumes_on_the_next_run(model_server, tmp_path, small_params):
    model_server.modes[DATA] = "throttle"
    process = start_loading(tmp_path, model_server)
    wait_for_part(tmp_path / "124M", 1 << 20)
    process.kill()
    process.communicate()
    assert DATA not in final_names(tmp_path / "124M")
    rerun = start_loading(tmp_path, model_server)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert model_server.hits(DATA)[-1]["Range"].startswith("bytes=")
    assert_same_params(load(tmp_path)[2], small_params)


@pytest.mark.slow
def test_ctrl_c_during_download(model_server, tmp_path):
    model_server.modes[DATA] = "throttle"
    process = start_loading(tmp_path, model_server, "Hello", "--models_dir", str(tmp_path))
    wait_for_part(tmp_path / "124M", 1 << 20)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    assert out == "" and DATA not in final_names(tmp_path / "124M")
    assert (tmp_path / "124M" / f".{DATA}.part").stat().st_size > 0  # kept, for the next run to resume

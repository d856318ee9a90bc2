"""`--serve` under load and hostile clients: bursts of connections, a thousand idle ones, clients
that trickle bytes or send less than they announce, clients that vanish, and a shutdown none of them
can hold up."""

import json
import resource
import signal
import socket
import struct
import threading
import time
import urllib.request

import pytest
from helpers import PROMPT, ServerProcess

from serve import completions, server

pytestmark = pytest.mark.slow  # servers in new processes

BODY = json.dumps({"model": "124M", "prompt": PROMPT, "max_tokens": 2, "temperature": 0}).encode()


def raw_post(address, body=BODY, path="/v1/completions", connect_timeout=60):
    """The whole raw answer to a POST sent on a connection of its own."""
    with socket.create_connection(address, timeout=connect_timeout) as connection:
        connection.settimeout(60)
        connection.sendall(f"POST {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        answer = b""
        while piece := connection.recv(65536):
            answer += piece
    return answer


def address_of(url):
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


@pytest.fixture(scope="module")
def served(small_models_dir):
    with ServerProcess("--models_dir", str(small_models_dir)) as process:
        yield process
        assert process.stop() == 130


def test_64_clients_connecting_at_once_are_all_answered(served):
    """A burst that comes while the server is busy (here: stopped for a moment) waits in the kernel's
    queue of connections until the server takes them. With socketserver's queue of 5, the kernel
    dropped the rest of the burst: their clients were reset, or tried again seconds later."""
    start, answers = threading.Barrier(65), [None] * 64

    def client(i):
        start.wait()
        try:
            answers[i] = raw_post(address_of(served.url), connect_timeout=2)
        except OSError as e:
            answers[i] = repr(e).encode()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for thread in threads:
        thread.start()
    served.process.send_signal(signal.SIGSTOP)
    try:
        start.wait()
        time.sleep(2.5)  # the clients that the queue did not hold have given up
    finally:
        served.process.send_signal(signal.SIGCONT)
    for thread in threads:
        thread.join()
    failed = [answer[:80] for answer in answers if not answer.startswith(b"HTTP/1.1 200")]
    assert not failed, f"{len(failed)} of 64: {failed[:3]}"


@pytest.fixture
def many_files():
    """The open-files limit of this process raised to 4096 (skipped where it cannot be)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"the open-files limit is {hard}: 1,100 connections do not fit")
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096 if hard == resource.RLIM_INFINITY else min(hard, 4096), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_request_is_answered_beside_1100_idle_connections(served, many_files):
    idle = []
    try:
        for _ in range(1100):
            idle.append(socket.create_connection(address_of(served.url), timeout=30))
        time.sleep(1)  # every one accepted, each on a descriptor of its own
        answer = raw_post(address_of(served.url))
        assert answer.startswith(b"HTTP/1.1 200") and b'"finish_reason": "length"' in answer, answer[:300]
    finally:
        for connection in idle:
            connection.close()


def test_a_client_that_left_is_seen_on_any_descriptor(many_files):
    """Past descriptor 1023, select() raises "filedescriptor out of range": clients are watched with poll()."""
    held = [socket.socket() for _ in range(1100)]
    try:
        ours, theirs = socket.socketpair()
        assert ours.fileno() > 1100
        assert not completions.client_left(ours)
        theirs.sendall(b"GET / HTTP/1.1\r\n")  # a next request, pipelined: still there
        assert not completions.client_left(ours)
        theirs.close()
        ours.recv(100)
        assert completions.client_left(ours)
        ours.close()
    finally:
        for s in held:
            s.close()


def test_beyond_max_connections_a_client_gets_503_at_once(small_models_dir):
    with ServerProcess("--models_dir", str(small_models_dir), "--max_connections", "3") as process:
        idle = [socket.create_connection(address_of(process.url), timeout=30) for _ in range(3)]
        time.sleep(0.5)
        started = time.monotonic()
        answer = raw_post(address_of(process.url))
        assert time.monotonic() - started < 5
        assert answer.startswith(b"HTTP/1.1 503") and b"too_many_connections" in answer, answer[:300]
        for connection in idle:
            connection.close()
        time.sleep(0.5)
        assert raw_post(address_of(process.url)).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("in_request", [False, True], ids=["before-the-request-line", "in-the-headers"])
def test_sigterm_exits_in_bounded_time_whatever_a_client_trickles(small_models_dir, in_request):
    """A client sending one byte a second (each byte within the server's read timeout) must not keep
    the server alive: idle connections are closed at once, requests in flight after SHUTDOWN_SECONDS."""
    with ServerProcess("--models_dir", str(small_models_dir)) as process:
        connection = socket.create_connection(address_of(process.url), timeout=30)
        if in_request:
            connection.sendall(b"POST /v1/completions HTTP/1.1\r\n")
        stop = threading.Event()

        def trickle():
            while not stop.wait(1):
                try:
                    connection.sendall(b"X")
                except OSError:
                    return

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            time.sleep(1.5)
            started = time.monotonic()
            assert process.stop(signal.SIGTERM, timeout=60) == 143
            took = time.monotonic() - started
        finally:
            stop.set()
            trickler.join()
            connection.close()
        assert took < (server.SHUTDOWN_SECONDS + 3 if in_request else 3), took
        process.reader.join(timeout=10)
        assert "terminated (SIGTERM)" in process.log()


def test_a_body_shorter_than_its_content_length_gets_400(served):
    with socket.create_connection(address_of(served.url), timeout=60) as connection:
        connection.sendall(b'POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"model"')
        started, answer = time.monotonic(), b""
        while piece := connection.recv(65536):
            answer += piece
    assert time.monotonic() - started < server.BODY_SECONDS + 5
    assert answer.startswith(b"HTTP/1.1 400") and b"the body ended before its Content-Length of 100" in answer


def test_requests_are_logged_and_clients_that_vanish_print_no_traceback(served):
    for _ in range(100):  # connections reset in the middle of a request
        connection = socket.create_connection(address_of(served.url), timeout=30)
        connection.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        connection.close()
    with urllib.request.urlopen(urllib.request.Request(f"{served.url}/v1/completions", BODY), timeout=60) as answer:
        assert answer.status == 200
    deadline = time.monotonic() + 10
    while "POST /v1/completions 200 2 tokens" not in served.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = served.log()
    assert "127.0.0.1 POST /v1/completions 200 2 tokens" in log, log[-2000:]
    assert "Traceback" not in log and "Error" not in log, log[-2000:]


def test_listening_beyond_this_machine_warns(small_models_dir):
    with ServerProcess("--models_dir", str(small_models_dir), "--host", "0.0.0.0") as process:
        assert "warning: listening on 0.0.0.0, beyond this machine: there is no authentication" in process.log()
        assert process.stop() == 130

"""The HTTP server, which knows no model: one thread per connection reads a request, hands its JSON
body to the app's route for its method and path, and writes the answer (JSON, a page, or a stream of
server-sent events), or OpenAI's error object. It holds no more connections than it was given, bounds
how long a client may take to send, and on shutdown finishes the requests in flight for a while.

A route is `route(body, request) -> answer`: body the request's JSON object (None for GET), request
this module's Handler, whose `connection` tells when the client has gone and whose `n_tokens` goes
in the request's log line.
"""

import ipaddress
import json
import resource
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gpt2 import plural

MAX_BODY_BYTES = 1_000_000  # a request's body: 1024 tokens of prompt are some 5 KB of text
# A body over the limit is still read, up to this, before the answer: a client that sends it whole
# before it reads then gets its 400 rather than a broken pipe
MAX_DRAINED_BYTES = 16_000_000
LISTEN_BACKLOG = 1024  # connections the kernel holds until they are accepted (socketserver's default is 5)
SHUTDOWN_SECONDS = 8  # after SIGTERM, requests in flight get this long to finish (docker stop waits 10)
BODY_SECONDS = 5  # a body must keep coming: a pause this long ends the request with a 400


class BadRequest(ValueError):
    """What the client sent is wrong: answered with status 400 and OpenAI's error object."""

    def __init__(self, message, param=None, code=None):
        super().__init__(message)
        self.param, self.code = param, code


class RequestFailed(RuntimeError):
    """The server failed on a request (the model, or no memory left): status 500, with this message."""


class Replies:
    """How a handler writes its answers: a whole body (JSON, or a page), OpenAI's error object, or a
    stream of server-sent events in chunks."""

    def stream(self, chunks):
        """Server-sent events, one for each JSON object of chunks, then [DONE]. chunks.close() runs however
        the stream ends, the headers' write included: the route's clean-up (a client that has gone)."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.write_events(chunks)
        finally:
            chunks.close()

    def write_events(self, chunks):
        try:
            for chunk in chunks:
                self.write_chunk(f"data: {json.dumps(chunk)}\n\n")
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as e:  # the status is sent already: the error goes in the stream, as OpenAI's does
            if not isinstance(e, RequestFailed):
                print(f"error while streaming {self.path}: {type(e).__name__}: {e}", file=sys.stderr)
            message = str(e) if isinstance(e, RequestFailed) else "the server failed to finish this stream"
            self.write_chunk(f"data: {json.dumps(error_object(message, error_type='server_error'))}\n\n")
        self.write_chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def write_chunk(self, data):
        data = data.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def send(self, status, data, content_type, headers=()):  # headers: more (name, value) pairs
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(data)

    def send_json(self, status, obj):
        self.send(status, json.dumps(obj).encode(), "application/json")

    def send_error_json(self, status, message, param=None, code=None, error_type="invalid_request_error"):
        self.send_json(status, error_object(message, param, code, error_type))


class Handler(Replies, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gpt2.py"
    timeout = 60  # seconds a client may take to send its request: a stalled one must not hold a thread for ever

    def handle_one_request(self):
        """One request, and its line on stderr: the client, method, path, status, tokens made, seconds."""
        self.started, self.status, self.n_tokens = None, None, None
        try:
            super().handle_one_request()
        finally:
            self.server.request_done(self.connection)
            if self.started is not None:
                path = ascii(getattr(self, "path", ""))[1:-1][:200]  # a hostile path cannot forge lines
                tokens = "-" if self.n_tokens is None else f"{self.n_tokens} tokens"
                seconds = time.monotonic() - self.started
                line = f"{self.client_address[0]} {self.command or '-'} {path} {self.status or '-'} {tokens} {seconds:.2f} s"
                print(line, file=sys.stderr, flush=True)

    def parse_request(self):  # the request line has come: a request is in flight from here
        self.started = time.monotonic()
        self.server.request_started(self.connection)
        return super().parse_request()

    def log_request(self, code="-", size="-"):  # send_response's: the status, for the line at the end
        self.status = int(code) if code != "-" else None

    def log_message(self, format, *args):  # quiet: errors are answered to the client
        pass

    def do_GET(self):
        self.answer("GET")

    def do_POST(self):
        self.answer("POST")

    def answer(self, method):
        """The route's answer: a JSON object, bytes (a page), or JSON objects to stream (iterable, with close())."""
        routes = self.server.app.routes
        route = routes.get(f"{method} {self.path}")
        try:
            if route is None:
                return self.no_route(method, routes)
            answer = route(self.read_json() if method == "POST" else None, self)
            if isinstance(answer, bytes):
                return self.send(200, answer, "text/html; charset=utf-8")
            if isinstance(answer, dict):
                return self.send_json(200, answer)
            self.stream(answer)
        except BadRequest as e:
            self.send_error_json(400, str(e), e.param, e.code)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except RequestFailed as e:
            self.send_error_json(500, str(e), error_type="server_error")
        except Exception as e:  # a bug must cost one request, not the server
            print(f"error while answering {self.path}: {type(e).__name__}: {e}", file=sys.stderr)
            self.send_error_json(500, "the server failed to answer this request", error_type="server_error")

    def no_route(self, method, routes):
        """404 for a path that is not served; 405, with the methods it takes, for one served otherwise."""
        allowed = sorted(key.split(" ")[0] for key in routes if key.split(" ", 1)[1] == self.path)
        if not allowed:
            what = "page" if method == "GET" else "endpoint"
            return self.send_error_json(404, f"no such {what}: {method} {self.path}", code="not_found")
        if method == "POST":
            self.read_json()  # the body read, so that the connection is left where the next request starts
        message = f"{self.path} takes {' or '.join(allowed)}, not {method}"
        error = json.dumps(error_object(message, code="method_not_allowed")).encode()
        self.send(405, error, "application/json", [("Allow", ", ".join(allowed))])

    def read_json(self):
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("the request needs a Content-Length") from None
        if length < 0:
            raise BadRequest("the request's Content-Length is negative")
        if length > MAX_BODY_BYTES:
            unread = min(length, MAX_DRAINED_BYTES)
            while unread > 0 and (piece := self.rfile.read(min(1 << 16, unread))):
                unread -= len(piece)
            raise BadRequest(f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large")
        data = self.read_body(length)
        try:
            body = json.loads(data)
            json.dumps(body, ensure_ascii=False).encode()  # a lone surrogate ("\ud800" in JSON) is no text
        except UnicodeEncodeError:
            raise BadRequest(
                "the body holds a lone surrogate (\\ud800 to \\udfff): not text", code="invalid_json"
            ) from None
        except RecursionError:
            raise BadRequest("the body is nested too deeply", code="invalid_json") from None
        except ValueError as e:  # not UTF-8, JSONDecodeError, an integer of over 4,300 digits
            message = "it holds an integer of too many digits" if "digits" in str(e) else e
            raise BadRequest(f"the body is not JSON: {message}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def read_body(self, length):
        """The body's bytes; a client that stops sending them for BODY_SECONDS, or sends fewer than its
        Content-Length, gets a 400 (and its connection closed: where its next request starts is unknown)."""
        self.connection.settimeout(BODY_SECONDS)
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            data = b""
        finally:
            self.connection.settimeout(self.timeout)
        if len(data) < length:
            self.close_connection = True
            raise BadRequest(f"the body ended before its Content-Length of {length} bytes", code="invalid_json")
        return data


def error_object(message, param=None, code=None, error_type="invalid_request_error"):
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class Server(ThreadingHTTPServer):
    """The standard library's server, one thread per connection, that knows its connections: beyond
    max_connections a client gets 503 at once, and a shutdown closes idle ones at once and the others
    after SHUTDOWN_SECONDS (close_gracefully), so that no client can hold it open."""

    daemon_threads, block_on_close = True, False  # close_gracefully bounds the wait for the threads
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, max_connections):
        super().__init__(address, Handler)
        self.max_connections, self.lock = max_connections, threading.Lock()
        self.connections, self.busy = set(), set()  # open connections; those with a request in flight

    def process_request(self, request, client_address):
        with self.lock:
            full = len(self.connections) >= self.max_connections
            if not full:
                self.connections.add(request)
        if full:
            return self.refuse(request, client_address)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.connections.discard(request)

    def refuse(self, request, client_address):
        message = f"the server holds {self.max_connections} connections, its most: try again shortly"
        body = json.dumps(error_object(message, code="too_many_connections", error_type="server_error")).encode()
        head = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        try:
            request.settimeout(1)
            request.sendall(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            request.setblocking(False)
            request.recv(1 << 16)  # what the client sent, so that closing does not reset the connection
        except OSError:
            pass
        self.shutdown_request(request)
        print(f"{client_address[0]} - - 503 over --max_connections {self.max_connections}", file=sys.stderr)

    def request_started(self, connection):
        with self.lock:
            self.busy.add(connection)

    def request_done(self, connection):
        with self.lock:
            self.busy.discard(connection)

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):  # a client that left is no error
            print(f"error on a connection from {client_address[0]}: {type(error).__name__}: {error}", file=sys.stderr)

    def close_gracefully(self):
        """Stop listening; close idle connections at once and give requests in flight SHUTDOWN_SECONDS
        to finish (a second Ctrl-C or SIGTERM ends the wait); then close what is left."""
        self.socket.close()
        deadline, announced = time.monotonic() + SHUTDOWN_SECONDS, False
        try:
            while True:
                with self.lock:
                    idle, n_busy = self.connections - self.busy, len(self.busy)
                for connection in idle:
                    close_at_once(connection)
                if not n_busy or time.monotonic() > deadline:
                    break
                if not announced:
                    print(
                        f"finishing {plural(n_busy, 'request')} in flight, for {SHUTDOWN_SECONDS} s at most",
                        file=sys.stderr,
                    )
                    announced = True
                time.sleep(0.05)
        finally:
            with self.lock:
                left = list(self.connections)
            if self.busy:
                print(f"closing {plural(len(self.busy), 'request')} that did not finish in time", file=sys.stderr)
            for connection in left:
                close_at_once(connection)


def close_at_once(connection):  # from another thread: its handler's next read or write fails
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def bind(host, port, max_connections):
    """The listening server (before the model is loaded: a port in use fails at once)."""
    try:
        return Server((host, port), allowed_connections(max_connections))
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def allowed_connections(wanted):
    """max_connections as the open-files limit allows it, raised as far as it may be (each connection is
    a file; 64 are left for the model's files and the rest)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + 64
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(f"warning: the open-files limit ({soft}) allows {soft - 64} connections, not {wanted}", file=sys.stderr)
        return max(1, soft - 64)
    return wanted


def serve(server, app):
    """Answer requests with app.routes ({"METHOD path": route}) until Ctrl-C or SIGTERM (raised here by
    the caller's handlers), then finish the requests in flight, for SHUTDOWN_SECONDS at most. app's
    model_name is named at the start."""
    server.app = app
    host, port = server.server_address[:2]
    if beyond_loopback(host):
        print(
            f"warning: listening on {host}, beyond this machine: there is no authentication, anyone who reaches "
            "the port can use the model, and so can any web page open in a browser that reaches it",
            file=sys.stderr,
        )
    print(
        f"serving {app.model_name} on http://{host}:{port}/ (the page at /, OpenAI's API at /v1); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.close_gracefully()


def beyond_loopback(host):
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return host != "localhost"

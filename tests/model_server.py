"""An HTTP server on 127.0.0.1 for the download tests: it serves a models folder and misbehaves on request."""

import functools
import hashlib
import http.server
import os
import re
import threading
import time


class ModelServer:
    """An HTTP server on 127.0.0.1 serving a models folder as {url}/{model_size}/{file}, honouring
    Range requests, that can be told to misbehave per file: modes[file name] is one of the modes of
    FileHandler. It records every request."""

    def __init__(self, root):
        self.root, self.modes, self.requests, self.lock = root, {}, [], threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(FileHandler, self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()  # quick to shut down

    def hits(self, name):
        """The headers of each request for this file."""
        with self.lock:
            return [headers for path, headers in self.requests if path.endswith("/" + name)]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class FileHandler(http.server.BaseHTTPRequestHandler):
    """Modes: ok; 404; 500_twice (500 to the first two requests); slow (1 s before answering);
        garbage (other bytes than the file); ignore_range (always the whole file, status 200); short
        (half of what Content-Length announces, then the connection closes); drop_once (short, the first
        time only); throttle (64 KiB every 5 ms); etag (the file's sha256 as its ETag, as the HuggingFace hub
        sends for large files); etag_wrong (another sha256 as the ETag); redirect_etag_wrong (a 302 to the
    file that carries another sha256 as X-Linked-Etag, as the hub's redirect to its storage does, and
    the file itself sent without one)."""

    def __init__(self, state, *args, **kwargs):
        self.state = state
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        name = self.path.rsplit("/", 1)[-1].removesuffix("?stored")
        with self.state.lock:
            self.state.requests.append((self.path, dict(self.headers)))
        n_hits = len(self.state.hits(name))
        mode = self.state.modes.get(name, "ok")
        path = os.path.join(self.state.root, self.path.lstrip("/").removesuffix("?stored"))
        if mode == "404" or not os.path.isfile(path):
            return self.send_error(404)
        if mode == "500_twice" and n_hits <= 2:
            return self.send_error(500)
        if mode == "redirect_etag_wrong" and not self.path.endswith("?stored"):
            self.send_response(302)
            self.send_header("Location", f"{self.path}?stored")
            self.send_header("X-Linked-Etag", f'"{"0" * 64}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "slow":
            time.sleep(1)
        with open(path, "rb") as f:
            data = f.read()
        if mode == "garbage":
            data = b"garbage " + data
        etag = {"etag": hashlib.sha256(data).hexdigest(), "etag_wrong": "0" * 64}.get(mode)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and mode != "ignore_range":
            start = int(match.group(1))
            if start >= len(data):
                return self.send_error(416)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        if etag:  # as the HuggingFace hub vouches for a large file: its sha256 as the ETag
            self.send_header("ETag", f'"{etag}"')
        self.end_headers()
        if mode == "short" or (mode == "drop_once" and n_hits == 1):
            body = body[: len(body) // 2]
        try:
            for i in range(0, len(body), 1 << 16):
                self.wfile.write(body[i : i + (1 << 16)])
                if mode == "throttle":
                    time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

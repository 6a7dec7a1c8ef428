"""A loopback HTTP server serving fixed bytes per path, for media-fetch tests."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def serve_files(files: dict[str, bytes], redirects: dict[str, str] | None = None, *, default: bytes | None = None, seen: list | None = None):
    """Serve `files` (path -> body, whatever the query; any other path: `default`, else 404) on 127.0.0.1; yields the
    base URL. `seen` collects (path with query, Authorization header) of every request."""
    redirects = redirects or {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            if seen is not None:
                seen.append((self.path, self.headers.get("Authorization")))
            path = self.path.split("?", 1)[0]  # a presigned URL's signature is in its query
            if path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[path])
                self.end_headers()
                return
            body = files.get(path, default)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

"""A webhook receiver for the tests: a real HTTP server on this machine."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver:
    """A webhook receiver: every POSTed body, as JSON."""

    def __init__(self, status=200):
        self.bodies = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                size = int(self.headers["Content-Length"])
                outer.bodies.append(json.loads(self.rfile.read(size)))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/SECRET-TOKEN"

    def close(self):
        self.server.shutdown()

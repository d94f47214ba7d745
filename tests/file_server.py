"""A real HTTP server on 127.0.0.1 for the tests that fetch checkpoints by URL (never the internet)."""
import http.server
import re
import threading
from typing import Callable, Dict, Optional


class FileServer:
    """Serves `files` (URL path -> bytes) with Range support.

    `drop_after[path] = n` makes the next request for that path send only n bytes of the body and
    close the connection; `before_reply(path)`, when given, runs in the request's thread before the
    reply is sent (e.g. to hold a transfer open). `requests` lists (path, Range header or None).
    """

    def __init__(self, files: Dict[str, bytes], before_reply: Optional[Callable[[str], None]] = None):
        self.files = dict(files)
        self.drop_after: Dict[str, int] = {}
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if before_reply is not None:
                    before_reply(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.drop_after.pop(self.path, None)
                self.wfile.write(body[start:] if cut is None else body[start:start + cut])
                if cut is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

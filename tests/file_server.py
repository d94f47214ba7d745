"""A real HTTP server on 127.0.0.1 for the tests that download (checkpoints by URL, LibriSpeech archives):
real sockets, Range requests and broken transfers, never the internet."""
import http.server
import re
import threading
from pathlib import Path
from typing import Callable, Dict, Optional

# Longest a stalled response holds its connection open when `release` is never set, in seconds.
STALL_LIMIT_S = 30.0


class FileServer:
    """Serves `files` (URL path -> bytes) and, when given, the files of `folder` at `folder_url`/<name>,
    with Range support (`bytes=N-`: 206 from byte N, 416 past the end) and scripted failures.

    A folder's files are read again at every request, so a test may rewrite one between downloads.
    `drop_after[path] = n` makes the next response for that path send only n bytes of its body and close
    the connection (a dropped transfer, to be resumed); `stall_after[path] = n` makes every response for
    that path send n bytes and then hold the connection open until `release` is set (a transfer hanging
    mid-file while, e.g., its client is killed). `before_reply(path)`, when given, runs in the request's
    thread before the reply is sent (e.g. to hold a transfer open before any byte). `requests` lists
    (URL path, Range header or None) in arrival order.
    """

    def __init__(self, files: Optional[Dict[str, bytes]] = None, folder: Optional[Path] = None,
                 folder_url: str = "", before_reply: Optional[Callable[[str], None]] = None):
        self.files = dict(files or {})
        self.folder, self.folder_url = folder, folder_url.rstrip("/")
        self.drop_after: Dict[str, int] = {}
        self.stall_after: Dict[str, int] = {}
        self.release = threading.Event()
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if before_reply is not None:
                    before_reply(self.path)
                body = server.body(self.path)
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
                stall = server.stall_after.get(self.path)
                cut = server.drop_after.pop(self.path, None) if stall is None else stall
                self.wfile.write(body[start:] if cut is None else body[start:start + cut])
                if cut is not None:
                    self.wfile.flush()
                    if stall is not None:
                        server.release.wait(STALL_LIMIT_S)
                    self.close_connection = True  # mid-body: the client sees a short read

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def body(self, path: str) -> Optional[bytes]:
        """The bytes served at URL `path`, or None (404): `files` first, then a file directly in `folder`."""
        if path in self.files:
            return self.files[path]
        if self.folder is None or not path.startswith(self.folder_url + "/"):
            return None
        name = path[len(self.folder_url) + 1:]
        file = self.folder / name
        return file.read_bytes() if "/" not in name and file.is_file() else None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        self.release.set()  # a stalled response still open ends now, not after STALL_LIMIT_S
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

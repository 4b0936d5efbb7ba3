"""An HTTP proxy in front of the S3 test server that injects transient faults.

Usage:
    python3 s3_fault_proxy.py PORT UPSTREAM LOG
        [--unavailable-every N] [--stall-every N] [--lose-every N] [--stall-seconds S]
        [--hold METHOD PATH_PART SKIP before|after]

Every request is forwarded to UPSTREAM (http://host:port) unchanged, except:

- every N-th request (--unavailable-every) is answered `503 SlowDown` without
  reaching the server, as S3 does when it sheds load;
- every N-th GET or HEAD (--stall-every) gets no answer for S seconds, then
  its connection is closed: the client times out before the request was served;
- every N-th PUT, POST or DELETE (--lose-every) reaches the server and is
  applied, then its answer is withheld for S seconds and the connection closed:
  a lost response, the client cannot know whether it landed;
- with --hold, the request of METHOD whose path (with its query) or body
  contains PATH_PART, after SKIP such requests were let through, is held
  (METHOD DELETE also matches bulk deletes, `POST ?delete`): never
  answered, and with `before` never forwarded either, with `after` forwarded
  and applied first. The test then kills its client, which dies at that
  call, before or after the server applied it.

Each fault is appended to LOG as one line (`503 PUT /bucket/key`,
`held DELETE /bucket/key`), a hold's once the request is held. Prints
READY once listening, then serves until standard input closes (the test
process that started it exited).
"""

import argparse
import http.client
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)


class Schedule:
    """Counts requests by kind and says which fault, if any, each one gets."""

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.all = 0
        self.reads = 0
        self.writes = 0
        self.hold_matches = 0

    def fault(self, method, path, body):
        with self.lock:
            if self.args.hold:
                hold_method, part, skip, when = self.args.hold
                # A bulk delete (POST ?delete) names its keys in its body.
                bulk_delete = method == "POST" and "?delete" in path
                kind = "DELETE" if bulk_delete else method
                if kind == hold_method and (part in path or part.encode() in body):
                    self.hold_matches += 1
                    if self.hold_matches == int(skip) + 1:
                        return "hold-" + when
            self.all += 1
            if self.args.unavailable_every and self.all % self.args.unavailable_every == 0:
                return "503"
            if method in ("GET", "HEAD"):
                self.reads += 1
                if self.args.stall_every and self.reads % self.args.stall_every == 0:
                    return "stall"
            else:
                self.writes += 1
                if self.args.lose_every and self.writes % self.args.lose_every == 0:
                    return "lost"
            return None


def make_handler(args, schedule, log):
    upstream = urllib.parse.urlsplit(args.upstream)
    log_lock = threading.Lock()

    def record(fault, method, path, detail=""):
        with log_lock:
            line = f"{fault} {method} {urllib.parse.urlsplit(path).path} {detail}".strip()
            log.write(line + "\n")
            log.flush()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def read_body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return body
                    body += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def handle_any(self):
            body = self.read_body()
            fault = schedule.fault(self.command, self.path, body)
            if fault in ("hold-before", "hold-after"):
                if fault == "hold-after":
                    self.forward(body)
                keys = re.findall(rb"<Key>([^<]*)</Key>", body)
                named = " ".join(k.decode() for k in keys)
                record("held", self.command, self.path, named)
                # Held until the killed client's connection is gone.
                time.sleep(3600)
                self.close_connection = True
                return
            if fault == "503":
                record(fault, self.command, self.path)
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOW_DOWN)))
                self.end_headers()
                self.wfile.write(SLOW_DOWN)
                return
            if fault == "stall":
                record(fault, self.command, self.path)
                time.sleep(args.stall_seconds)
                self.close_connection = True
                return
            status, reason, headers, payload = self.forward(body)
            if fault == "lost":
                record(fault, self.command, self.path)
                time.sleep(args.stall_seconds)
                self.close_connection = True
                return
            self.send_response(status, reason)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            if self.command == "HEAD":
                length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
                self.send_header("Content-Length", length)
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def forward(self, body):
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            connection.close()
            return response.status, response.reason, response.getheaders(), payload

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_any

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("upstream")
    parser.add_argument("log")
    parser.add_argument("--unavailable-every", type=int, default=0)
    parser.add_argument("--stall-every", type=int, default=0)
    parser.add_argument("--lose-every", type=int, default=0)
    parser.add_argument("--stall-seconds", type=float, default=3.0)
    parser.add_argument("--hold", nargs=4, metavar=("METHOD", "PATH_PART", "SKIP", "WHEN"))
    args = parser.parse_args()
    if args.hold and args.hold[3] not in ("before", "after"):
        parser.error("--hold's last value is `before` or `after`")
    log = open(args.log, "a", encoding="utf-8")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args, Schedule(args), log))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("READY", flush=True)
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()

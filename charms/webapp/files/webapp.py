#!/usr/bin/python3
"""The webapp charm's application: GET / answers with the greetings table."""
import json
import subprocess
from http.server import BaseHTTPRequestHandler, HTTPServer

CONFIG = "/etc/webapp/db.json"


def load():
    with open(CONFIG) as f:
        return json.load(f)


def query(cfg, sql):
    out = subprocess.run(
        ["mysql", "-h", cfg["host"], "-u", cfg["user"], f"-p{cfg['password']}",
         cfg["database"], "-N", "-B", "-e", sql],
        capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return out.stdout


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            cfg = load()
            if not cfg["host"]:
                raise RuntimeError("no database related")
            body = query(cfg, "SELECT message FROM greetings ORDER BY id").encode()
            self.send_response(200)
        except Exception as e:  # the answer says why, the status says it failed
            body = f"error: {e}\n".encode()
            self.send_response(503)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    HTTPServer(("0.0.0.0", load()["port"]), Handler).serve_forever()

"""The demo service: prices items.

GET /price/<item>: looks the price up in the cache; on a miss, asks the
inventory service and stores the price in the cache. The cache connection
is opened once at start-up and shared (a pool of one), like real services do.

Usage: pricing.py PORT INVENTORY_PORT CACHE_PORT
"""
import http.server
import json
import signal
import socket
import sys
import threading
import urllib.request

PORT, INVENTORY_PORT, CACHE_PORT = (int(a) for a in sys.argv[1:4])


class CacheClient:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")
        self.lock = threading.Lock()

    def command(self, line):
        with self.lock:
            self.sock.sendall(line.encode() + b"\n")
            return self.file.readline().decode().strip()


cache = CacheClient(CACHE_PORT)


class Pricing(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        item = self.path.rsplit("/", 1)[-1]
        cached = cache.command(f"GET price:{item}")
        if cached.startswith("VALUE "):
            price, source = int(cached.split()[1]), "cache"
        else:
            url = f"http://127.0.0.1:{INVENTORY_PORT}/inventory/{item}"
            stock = json.load(urllib.request.urlopen(url))
            price = stock["base_price"] * (2 if stock["stock"] < 10 else 1)
            source = "inventory"
            cache.command(f"SET price:{item} {price}")
        body = json.dumps({"item": item, "price": price, "source": source}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    # Exit cleanly on SIGTERM, as a real service does (exit handlers run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Pricing).serve_forever()

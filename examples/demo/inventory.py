"""The demo's backend: an HTTP inventory service.

GET /inventory/<item> -> {"item": ..., "stock": N, "base_price": P}
"""
import http.server
import json
import sys
import zlib


class Inventory(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        item = self.path.rsplit("/", 1)[-1]
        seed = zlib.crc32(item.encode())
        body = json.dumps({"item": item, "stock": seed % 50, "base_price": 100 + seed % 900}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Inventory).serve_forever()

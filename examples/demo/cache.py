"""The demo's cache: a tiny line protocol over TCP, like a toy redis.

  GET <key>\n          -> VALUE <value>\n | MISS\n
  SET <key> <value>\n  -> OK\n
"""
import socketserver
import sys

store = {}


class Cache(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            parts = line.decode().split()
            if parts[:1] == ["GET"] and len(parts) == 2:
                value = store.get(parts[1])
                reply = f"VALUE {value}\n" if value is not None else "MISS\n"
            elif parts[:1] == ["SET"] and len(parts) == 3:
                store[parts[1]] = parts[2]
                reply = "OK\n"
            else:
                reply = "ERR\n"
            self.wfile.write(reply.encode())


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Cache).serve_forever()

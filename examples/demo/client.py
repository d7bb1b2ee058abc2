"""Sends the demo's traffic: a few items, each asked twice, over keep-alive."""
import http.client
import sys

port = int(sys.argv[1])
conn = http.client.HTTPConnection("127.0.0.1", port)
for item in ["apple", "pear", "fig", "apple", "pear", "fig"]:
    conn.request("GET", f"/price/{item}")
    print(f"  GET /price/{item} -> {conn.getresponse().read().decode()}")
conn.close()

"""A TCP listener whose accept queue is full, so new connects hang until they time out.

Prints one JSON ready line with its address, then sleeps until killed. Loopback only.
"""
import json
import socket
import sys
import time

srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0))
srv.listen(0)
addr = srv.getsockname()
fillers = []
# With backlog 0 Linux queues one connection; fill the queue (never accept) so further
# SYNs are dropped and connects time out.
for _ in range(4):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setblocking(False)
    try:
        c.connect(addr)
    except BlockingIOError:
        pass
    fillers.append(c)
time.sleep(0.2)
print(json.dumps({"event": "ready", "address": f"{addr[0]}:{addr[1]}"}), flush=True)
while True:
    time.sleep(3600)

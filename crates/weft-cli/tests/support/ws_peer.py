"""A real WebSocket server and client (python websockets) for weft's end-to-end tests.

  ws_peer.py server        prints {"event":"ready","address":...}, echoes messages until killed
  ws_peer.py client URL    exchanges text and binary messages, prints one JSON result
  ws_peer.py hold URL      opens one connection and keeps it: prints {"event":"ready"}, then
                           for every stdin line sends it and prints {"sent","echo"}; exits
                           on EOF or "end"
"""
import asyncio
import json
import sys

import websockets


async def echo(ws, path=None):
    async for msg in ws:
        await ws.send(msg)


async def serve():
    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"event": "ready", "address": f"127.0.0.1:{port}"}), flush=True)
        await asyncio.Future()


async def client(url):
    out = {"texts": [], "binary_ok": False}
    async with websockets.connect(url, open_timeout=10) as ws:
        for i in range(100):
            await ws.send(f"msg-{i}")
            out["texts"].append(await asyncio.wait_for(ws.recv(), 10))
        blob = bytes(range(256)) * 400  # 100 KB, several frames' worth
        await ws.send(blob)
        out["binary_ok"] = (await asyncio.wait_for(ws.recv(), 10)) == blob
    print(json.dumps(out), flush=True)


async def hold(url):
    loop = asyncio.get_running_loop()
    async with websockets.connect(url, open_timeout=10, ping_interval=None) as ws:
        print(json.dumps({"event": "ready"}), flush=True)
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not line or line == "end":
                return
            try:
                await ws.send(line)
                echo = await asyncio.wait_for(ws.recv(), 10)
            except Exception as e:  # report, do not hide: the test fails on it
                echo = f"error: {e!r}"
            print(json.dumps({"sent": line, "echo": echo}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(serve())
    elif sys.argv[1] == "hold":
        asyncio.run(hold(sys.argv[2]))
    else:
        asyncio.run(client(sys.argv[2]))

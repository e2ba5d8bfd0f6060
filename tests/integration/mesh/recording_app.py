"""A stand-in app that records every byte it receives: to prove what a proxy never sent.

    python recording_app.py --listen-fd 3 --record bytes.log --ready-file ready.json

It serves HTTP/1.1 GET-style requests (no bodies): each request head gets ``200 ok``
on a kept-alive connection, so the proxy's health checks and plain requests work. Every
piece of data it reads is appended to ``--record`` as one JSON line
``{"conn": N, "data": "<latin-1 text>"}`` (flushed at once). Once serving it writes
``{"pid": ..., "port": ...}`` to ``--ready-file`` atomically. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
from pathlib import Path
from typing import IO

_ids = itertools.count(1)


async def serve_connection(
    record: IO[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    conn = next(_ids)
    buf = b""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            record.write(json.dumps({"conn": conn, "data": data.decode("latin-1")}) + "\n")
            record.flush()
            buf += data
            while b"\r\n\r\n" in buf:
                _head, _, buf = buf.partition(b"\r\n\r\n")
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
                )
                await writer.drain()
    except OSError:
        return
    finally:
        writer.close()


async def main_async(sock: socket.socket, record_path: Path, ready: Path | None) -> None:
    with open(record_path, "a", encoding="utf-8") as record:
        sock.setblocking(False)
        server = await asyncio.start_server(lambda r, w: serve_connection(record, r, w), sock=sock)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if ready is not None:
            tmp = ready.with_name(f".{ready.name}.tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "port": sock.getsockname()[1]}))
            os.replace(tmp, ready)
        await stop.wait()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args()
    sock = socket.socket(fileno=args.listen_fd)
    asyncio.run(main_async(sock, args.record, args.ready_file))


if __name__ == "__main__":
    main()

"""`serve_load.py --slow-clients N`: does a server under abuse still answer a normal client in time?

One mixed-batching fp32 server with one prompt, loopback only. Measured in order:
1. idle: the normal load of serve_load.py (`--concurrency` clients, `--requests` requests) alone;
2. the same load while N slow clients hold connections: each sends a POST's headers and a few bytes of a
   body it never finishes, a byte per second (the server cuts it off after --body-seconds with 408, and
   the client connects again at once), and every fifth sends its headers a byte per second instead;
3. hostile bodies, each 5 times, one at a time, over raw connections: 2 KB and 100 KB of nested brackets,
   a 6 MB body (one 6M-character text: under the byte limit, refused for its length after parsing) and a
   6.3 MB one (over the byte limit) each with a declared length and chunked without one. Each answer's
   status and its time from the first byte sent and from the last.
The verdict lines compare step 2's p99 with 2x step 1's and every hostile answer's time with 50 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import time



async def slow_client(port: int, stop: asyncio.Event, headers_only: bool, counts: dict) -> None:
    head = (b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n")
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["refused"] += 1
            await asyncio.sleep(0.5)
            continue
        counts["connections"] += 1
        try:
            if headers_only:
                for byte in head[:-4]:
                    if stop.is_set():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1.0)
            else:
                writer.write(head + b'{"prompt": ')
                await writer.drain()
                while not stop.is_set() and not reader.at_eof():
                    try:
                        answer = await asyncio.wait_for(reader.read(4096), 1.0)
                    except asyncio.TimeoutError:
                        writer.write(b" ")
                        await writer.drain()
                        continue
                    if answer.startswith(b"HTTP/1.1 408"):
                        counts["cut_off"] += 1
                    if not answer:
                        break
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def send_raw(port: int, head: bytes, body_parts: list[bytes]) -> dict:
    """One request by hand: the answer's status, the time from the first byte sent and from the last."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(head)
    for part in body_parts:
        writer.write(part)
        await writer.drain()
    sent = time.perf_counter()
    line = await reader.readline()
    answered = time.perf_counter()
    writer.close()
    return {"status": int(line.split()[1]) if line else None, "ms": (answered - started) * 1000,
            "after_last_byte_ms": (answered - sent) * 1000}


async def hostile(url: str) -> list[dict]:
    """Each hostile body 5 times, one at a time, over a raw connection (so the times are the server's and
    the loopback's, not an HTTP client's)."""
    port = int(url.rsplit(":", 1)[1])

    def declared(body: bytes) -> tuple[bytes, list[bytes]]:
        return (b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body), [body])

    def chunked(body: bytes) -> tuple[bytes, list[bytes]]:
        parts = [body[i:i + 65536] for i in range(0, len(body), 65536)]
        return (b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n",
                [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"])

    six_mb = b'{"prompt": "p00", "texts": ["' + b"a" * 6_000_000 + b'"]}'
    over = b'{"prompt": "p00", "texts": ["' + b"a" * 6_300_000 + b'"]}'  # above the default byte limit
    cases = {"nested 2 KB": declared(b"[" * 2048), "nested 100 KB": declared(b"[" * 100_000),
             "6 MB, length declared": declared(six_mb), "6 MB, chunked": chunked(six_mb),
             "6.3 MB (over the byte limit), length declared": declared(over),
             "6.3 MB (over the byte limit), chunked": chunked(over)}
    out = []
    for label, (head, parts) in cases.items():
        for _ in range(5):
            out.append({"case": label, **await send_raw(port, head, parts)})
    return out


def abuse_run(url: str, names: list[str], texts: list[str], args, load) -> dict:
    port = int(url.rsplit(":", 1)[1])
    idle = asyncio.run(load(url, names, texts, args, seed=1))

    async def under_abuse():
        stop, counts = asyncio.Event(), {"connections": 0, "cut_off": 0, "refused": 0}
        holders = [asyncio.ensure_future(slow_client(port, stop, i % 5 == 4, counts))
                   for i in range(args.slow_clients)]
        await asyncio.sleep(3.0)  # every slow client connected and talking
        loaded = await load(url, names, texts, args, seed=1)
        stop.set()
        await asyncio.wait(holders, timeout=5)
        return loaded, counts

    abused, counts = asyncio.run(under_abuse())
    bodies = asyncio.run(hostile(url))
    slowest = {}
    for row in bodies:
        was = slowest.get(row["case"], {"ms": 0.0, "after_last_byte_ms": 0.0})
        slowest[row["case"]] = {k: max(was[k], row[k]) for k in was}
    result = {"idle": idle, "slow_clients": args.slow_clients, "under_abuse": abused, "slow_client_counts": counts,
              "p99_ratio": abused["p99_ms"] / idle["p99_ms"] if idle["p99_ms"] and abused["p99_ms"] else None,
              "hostile_bodies": bodies, "slowest_hostile_ms": slowest}
    print(f"normal client alone: p99 {idle['p99_ms']:.0f} ms, {idle['errors']} errors · with {args.slow_clients} "
          f"slow clients ({counts['connections']} connections, {counts['cut_off']} cut off by the body deadline): "
          f"p99 {abused['p99_ms']:.0f} ms, {abused['errors']} errors · ratio {result['p99_ratio']:.2f} "
          f"(target <= 2)", flush=True)
    for case, worst in slowest.items():
        statuses = sorted({r["status"] for r in bodies if r["case"] == case})
        print(f"{case}: {statuses}, slowest of 5: {worst['ms']:.1f} ms from the first byte sent, "
              f"{worst['after_last_byte_ms']:.1f} ms after the last (target < 50)", flush=True)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slow-clients", type=int, help="instead: one server, the normal load alone and beside "
                        "N slow clients, then hostile bodies (benchmarks/serve_abuse.py)")

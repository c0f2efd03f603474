"""A crawler that takes new seeds over HTTP while it runs.

    python examples/seed_server.py --port 8500 [--rate 2]

    curl -X POST --data 'http://127.0.0.1:8000/' http://127.0.0.1:8500/seeds
    curl http://127.0.0.1:8500/stats          # live statistics as JSON
    curl -X POST http://127.0.0.1:8500/stop   # finish in-flight pages, then exit

The crawl (`stay_open=True`) and the web server share one trio nursery: a seed
posted while the crawl runs joins the same frontier (deduplicated, scope widened
to its host), and stopping the crawl ends the server too. Pages are printed as
JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from functools import partial

import h11
import trio

import crawler


def respond(status: int, body: object) -> tuple[h11.Response, bytes]:
    data = json.dumps(body).encode() + b"\n"
    headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
    headers.append(("connection", "close"))
    return h11.Response(status_code=status, headers=headers), data


def route(crawl: crawler.Crawl, method: bytes, target: bytes, body: bytes) -> tuple[int, object]:
    if method == b"POST" and target == b"/seeds":
        urls = body.decode("utf-8", "replace").split()
        added = {url: crawl.add(url, seed=True, priority=1) for url in urls}
        return 202, {"added": added}
    if method == b"GET" and target == b"/stats":
        return 200, dataclasses.asdict(crawl.statistics())
    if method == b"POST" and target == b"/stop":
        crawl.stop()
        return 202, {"stopping": True}
    return 404, {"error": "POST /seeds, GET /stats or POST /stop"}


async def serve_client(crawl: crawler.Crawl, stream: trio.SocketStream) -> None:
    connection = h11.Connection(h11.SERVER)
    request: h11.Request | None = None
    body = b""
    async with stream:
        with trio.move_on_after(10):
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    connection.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    status, payload = route(crawl, request.method, request.target, body)
                    response, data = respond(status, payload)
                    out = connection.send(response) or b""
                    out += connection.send(h11.Data(data=data)) or b""
                    out += connection.send(h11.EndOfMessage()) or b""
                    await stream.send_all(out)
                    return
                else:
                    return


async def main(port: int, rate: float) -> None:
    config = crawler.CrawlConfig(seeds=(), stay_open=True, rate=rate)
    async with crawler.open_crawl(config) as crawl, trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        bound = listeners[0].socket.getsockname()[1]
        await nursery.start(trio.serve_listeners, partial(serve_client, crawl), listeners)
        print(json.dumps({"listening": bound}), flush=True)
        async for page in crawl:
            line = {"url": page.url, "status": page.status, "title": page.title}
            print(json.dumps(line), flush=True)
        nursery.cancel_scope.cancel()  # the crawl ended: stop serving


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--rate", type=float, default=2.0)
    args = parser.parse_args()
    trio.run(main, args.port, args.rate)
    sys.exit(0)

"""HTML parsing in child processes: how a crawl uses a second core.

A page's parse (Lexbor, link extraction, URL normalisation) is a third of the CPU the
crawl's process spends on a page, and a pure function of the body, the URL and the
Content-Type. With ``CrawlConfig.parse_processes = N`` it runs in N child processes
while the crawl's process goes on fetching; a frame each way costs the crawl's
process far less than the parse (see ``benchmarks/results/RESULTS.md``).

Pages are parsed in the crawl's own process until a child says it is ready, and for
good if none can be started. A child that dies (a parser crash on hostile HTML) is
started again, and the pages it held go to the next one marked careful: each is
answered before the next is parsed, so a child that dies again on a careful page
names that page, whose error it is (`ParserCrashed`), and only that page's.

The child runs ``_parsechild.serve`` under the same interpreter, with this package
registered as a bare namespace (its ``__init__`` not run), so it imports only the
parser and starts in ~0.1 s.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import outcome
import trio

from ._links import ParsedPage, parse_html
from ._parsechild import READY, REPLY, decode_reply, encode_request

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

_PACKAGE = __name__.rpartition(".")[0]
_BOOT = (
    "import sys, types\n"
    "package = types.ModuleType({name!r})\n"
    "package.__path__ = [{path!r}]\n"
    "sys.modules[{name!r}] = package\n"
    "from {name}._parsechild import serve\n"
    "serve()\n"
)
_READ_SIZE = 1 << 20
_MAX_STARTS = 3
"""Children in a row that die before they are ready: then parse in-process."""


class ParserCrashed(Exception):
    """A parse process died parsing this page (it died on it twice: see the module)."""


def default_parse_processes() -> int:
    """The ``crawl`` command's default: one parse process when this process may run on
    two or more cores (its CPU affinity, which containers and taskset narrow)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return 1 if cores >= 2 else 0


def child_command() -> list[str] | None:
    """The command that starts a parse process, or None when there is no interpreter
    to run it with (an embedded Python) or the pipes cannot be waited on (not POSIX)."""
    if not sys.executable or os.name != "posix":
        return None
    path = os.path.dirname(os.path.abspath(__file__))
    return [sys.executable, "-c", _BOOT.format(name=_PACKAGE, path=path)]


@dataclass(slots=True, eq=False)
class _Waiter:
    """A page waiting for its parse. It keeps what makes its frame, not the frame: the
    body is the page's own, and a copy per page in flight would double their memory."""

    task: trio.lowlevel.Task
    body: bytes
    url: str
    content_type: str | None
    max_links: int
    max_url_length: int
    careful: bool = False

    def frame(self, ident: int) -> bytes:
        return encode_request(
            ident,
            self.body,
            self.url,
            self.content_type,
            self.max_links,
            self.max_url_length,
            careful=self.careful,
        )


@dataclass(slots=True, eq=False)
class _Child:
    process: trio.Process
    stdin: int
    stdout: int
    """The pipes' file descriptors (non-blocking), read and written directly: trio's
    streams add a checkpoint and a conflict check per call, on a per-page path."""
    ready: bool = False
    held: dict[int, None] = field(default_factory=dict)
    """Ids sent to this child and not answered yet, in the order sent."""
    out: list[bytes] = field(default_factory=list)
    """Frames queued for the writer."""
    wake: trio.Event = field(default_factory=trio.Event)


async def _start(command: list[str]) -> _Child:
    """Start a child on two pipes of our own (raw descriptors, see `_Child`)."""
    child_stdin, to_child = os.pipe()  # (read end, write end)
    from_child, child_stdout = os.pipe()
    try:
        process = await trio.lowlevel.open_process(command, stdin=child_stdin, stdout=child_stdout)
    except BaseException:
        os.close(to_child)
        os.close(from_child)
        raise
    finally:
        os.close(child_stdin)
        os.close(child_stdout)
    os.set_blocking(to_child, False)
    os.set_blocking(from_child, False)
    return _Child(process, to_child, from_child)


class ParsePool:
    """`processes` parse processes; run it in a nursery (`run`), then `parse` pages.

    `command`: what starts a child (default: `child_command`; tests start odd ones)."""

    def __init__(self, processes: int, *, command: Sequence[str] | None = None) -> None:
        self._processes = processes
        self._command = list(command) if command is not None else child_command()
        self._children: list[_Child] = []
        self._waiters: dict[int, _Waiter] = {}
        self._next_id = READY

    @property
    def ready(self) -> bool:
        """Whether a child is ready (pages are parsed here until then)."""
        return any(child.ready for child in self._children)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the children running until cancelled; they are killed on the way out."""
        async with trio.open_nursery() as nursery:
            if self._command is not None:
                for _ in range(self._processes):
                    nursery.start_soon(self._keep_child, self._command)
            task_status.started()

    async def parse(
        self,
        body: bytes,
        url: str,
        content_type: str | None,
        *,
        max_links: int,
        max_url_length: int,
    ) -> ParsedPage:
        """`parse_html`'s result, from a child when one is ready."""
        ready = [child for child in self._children if child.ready]
        if not ready:
            return parse_html(
                body, url, content_type, max_links=max_links, max_url_length=max_url_length
            )
        child = min(ready, key=lambda c: len(c.held)) if len(ready) > 1 else ready[0]
        ident = self._new_id()
        task = trio.lowlevel.current_task()
        waiter = _Waiter(task, body, url, content_type, max_links, max_url_length)
        self._waiters[ident] = waiter
        self._send(child, ident, waiter)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiters.pop(ident, None)  # its reply, if one comes, is dropped
            return trio.lowlevel.Abort.SUCCEEDED

        result: ParsedPage = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def _new_id(self) -> int:
        self._next_id = self._next_id % 0xFFFFFFFF + 1  # 1 .. 2**32-1: never READY
        return self._next_id

    @staticmethod
    def _send(child: _Child, ident: int, waiter: _Waiter) -> None:
        # Queued for the writer, which sends whatever queued meanwhile in one write:
        # a write (and a wake-up of the child) per page costs both processes ~20% more.
        child.held[ident] = None
        child.out.append(waiter.frame(ident))
        child.wake.set()

    async def _keep_child(self, command: list[str]) -> None:
        """Run one child, and start it again whenever it dies."""
        again: list[int] = []  # pages the last child died holding, in the order sent
        failed_starts = 0
        while True:
            try:
                child = await _start(command)
            except OSError as exc:
                logger.warning("cannot start a parse process (%s); parsing in-process", exc)
                self._parse_here(again)
                return
            process = child.process
            self._children.append(child)
            for ident in again:
                waiter = self._waiters.get(ident)
                if waiter is not None:
                    self._send(child, ident, waiter)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write, child)
                    await self._read(child)
                    nursery.cancel_scope.cancel()
            finally:
                self._children.remove(child)
                os.close(child.stdin)
                os.close(child.stdout)
                with trio.CancelScope(shield=True):
                    process.kill()
                    await process.wait()
            failed_starts = 0 if child.ready else failed_starts + 1
            again = [ident for ident in child.held if ident in self._waiters]
            logger.warning(
                "parse process exited with status %s holding %d page(s)",
                process.returncode,
                len(again),
            )
            if again and self._waiters[again[0]].careful:
                # Every careful page sent before it was answered: this one killed the child.
                waiter = self._waiters.pop(again.pop(0))
                error = ParserCrashed("the HTML parse process died while parsing this page")
                trio.lowlevel.reschedule(waiter.task, outcome.Error(error))
            for ident in again:
                self._waiters[ident].careful = True
            if failed_starts >= _MAX_STARTS:
                logger.warning(
                    "parse process exited %d times before it was ready; parsing in-process",
                    failed_starts,
                )
                self._parse_here(again)
                return

    def _parse_here(self, idents: list[int]) -> None:
        """Parse these pages in this process: no child will."""
        for ident in idents:
            waiter = self._waiters.pop(ident, None)
            if waiter is None:
                continue
            parsed = parse_html(
                waiter.body,
                waiter.url,
                waiter.content_type,
                max_links=waiter.max_links,
                max_url_length=waiter.max_url_length,
            )
            trio.lowlevel.reschedule(waiter.task, outcome.Value(parsed))

    @staticmethod
    async def _write(child: _Child) -> None:
        """Write what `_send` queued, all of it at once."""
        while True:
            await child.wake.wait()
            child.wake = trio.Event()
            data = memoryview(b"".join(child.out))
            child.out.clear()
            while data:
                try:
                    data = data[os.write(child.stdin, data) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(child.stdin)
                except OSError:
                    return  # the child is gone: its reader sees the end of its output

    async def _read(self, child: _Child) -> None:
        """Hand each reply to its waiting page, until the child's output ends."""
        buffer = bytearray()
        size = REPLY.size
        while True:
            await trio.lowlevel.wait_readable(child.stdout)
            try:
                chunk = os.read(child.stdout, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:  # a read error on the pipe: the child is gone
                return
            if not chunk:
                return
            buffer += chunk
            at = 0
            while len(buffer) - at >= size:
                ident, length = REPLY.unpack_from(buffer, at)
                end = at + size + length
                if len(buffer) < end:
                    break
                payload = bytes(buffer[at + size : end])
                at = end
                if ident == READY:
                    child.ready = True
                    continue
                child.held.pop(ident, None)
                waiter = self._waiters.pop(ident, None)
                if waiter is not None:
                    trio.lowlevel.reschedule(waiter.task, outcome.capture(decode_reply, payload))
            if at:
                del buffer[:at]

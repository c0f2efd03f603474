"""The ``crawl`` command: argument -> CrawlConfig merging in-process, the rest as a subprocess
(``python -m crawler``) against the loopback site server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import trio

from crawler._cli import UsageError, build_config, main, parse_args
from crawler._config import (
    DEFAULT_USER_AGENT,
    OPTIONS,
    ConfigError,
    CrawlConfig,
    HostLimits,
    NoSeeds,
)
from crawler._logs import JsonFormatter, _record_fields
from crawler._page import ErrorKind
from crawler._parsepool import default_parse_processes
from crawler._version import __version__
from tests.test_output import SCHEMA_KEYS
from tests.web.core import RequestRecord, http_response, raw_server, responder
from tests.web.routes import SiteServer, open_site_server

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 30.0


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "100"
    env.pop("PYTHONWARNINGS", None)
    return env


async def run_crawl(*args: str) -> Result:
    with trio.fail_after(RUN_TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-m", "crawler", *args],
            cwd=ROOT,
            env=_env(),
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "last line is incomplete"
    return [json.loads(line) for line in text.splitlines()]


def assert_one_error_line(result: Result, *needles: str) -> None:
    assert result.code == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("crawl: error: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------
# Arguments -> CrawlConfig (in-process)


def test_defaults_come_from_crawl_config() -> None:
    # Except one: the command parses HTML in a child process when it has a core to spare.
    assert build_config(["http://example.com/"]) == CrawlConfig(
        seeds=("http://example.com/",), parse_processes=default_parse_processes()
    )


def test_parse_processes_default_and_overrides(tmp_path: Path) -> None:
    seed = "http://example.com/"
    assert build_config([seed, "--parse-processes", "0"]).parse_processes == 0
    assert build_config([seed, "--parse-processes=2"]).parse_processes == 2
    config_file = tmp_path / "crawl.toml"
    config_file.write_text("parse_processes = 0\n")
    assert build_config([seed, "--config", str(config_file)]).parse_processes == 0
    config_file.write_text("rate = 2\n")
    assert (
        build_config([seed, "--config", str(config_file)]).parse_processes
        == default_parse_processes()
    )
    with pytest.raises(UsageError, match="parse-processes"):
        build_config([seed, "--parse-processes=-1"])


def test_default_parse_processes_follows_the_cores_we_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_parse_processes() == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert default_parse_processes() == 1


def test_every_flag_maps_onto_crawl_config(tmp_path: Path) -> None:
    config = build_config(
        [
            "http://a.example/",
            "https://b.example/x",
            "--max-pages=10",
            "--max-depth=3",
            "--concurrency=7",
            "--per-host=3",
            "--rate=0.5",
            "--burst=4",
            "--scope=domain",
            "--include=/docs/",
            "--include=/blog/",
            "--exclude=\\.pdf$",
            "--ignore-robots",
            "--sitemaps",
            "--user-agent=tester/1",
            "--retries=5",
            "--max-bytes=1000",
            "--timeout=2.5",
            "--parse-processes=0",
            f"--state={tmp_path}",
            "--warc=x.warc.gz",
        ]
    )
    assert config == CrawlConfig(
        seeds=("http://a.example/", "https://b.example/x"),
        max_pages=10,
        max_depth=3,
        concurrency=7,
        per_host=3,
        rate=0.5,
        burst=4,
        scope="domain",
        include=("/docs/", "/blog/"),
        exclude=("\\.pdf$",),
        obey_robots=False,
        sitemaps=True,
        user_agent="tester/1",
        retries=5,
        max_bytes=1000,
        timeout=2.5,
        state=tmp_path,
        keep_exchanges=True,
        parse_processes=0,
    )


CONFIG_TOML = """\
seeds = ["http://from-file.example/"]
rate = 5
per_host = 4
scope = "any"
include = ["/a/"]
obey_robots = false
max_bytes = 2048

[hosts."example.com"]
rate = 10
per_host = 3

[hosts."http://127.0.0.1:8080"]
burst = 2
"""


def test_config_file_then_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "crawl.toml"
    path.write_text(CONFIG_TOML)
    from_file = build_config(["--config", str(path)])
    assert from_file.seeds == ("http://from-file.example/",)
    assert (from_file.rate, from_file.per_host, from_file.scope) == (5, 4, "any")
    assert from_file.include == ("/a/",)
    assert from_file.obey_robots is False
    assert from_file.max_bytes == 2048
    assert from_file.concurrency == 32  # not in the file: CrawlConfig's default
    assert dict(from_file.hosts) == {
        "example.com": HostLimits(rate=10, per_host=3),
        "http://127.0.0.1:8080": HostLimits(burst=2),
    }
    # per-host overrides take effect; other hosts get the file's crawl-wide values
    assert from_file.limits_for("example.com", "https://example.com") == (10, 1, 3)
    assert from_file.limits_for("127.0.0.1", "http://127.0.0.1:8080") == (5, 2, 4)
    assert from_file.limits_for("other.example", "https://other.example") == (5, 1, 4)

    flags = build_config(
        ["http://cli.example/", "--config", str(path), "--rate", "2", "--include", "/b/"]
    )
    assert flags.seeds == ("http://cli.example/",)  # command-line seeds win
    assert flags.rate == 2  # flag beats file
    assert flags.per_host == 4  # flag not given: the file's value stands
    assert flags.include == ("/b/",)
    assert flags.obey_robots is False  # no --ignore-robots flag: the file's false stands
    assert flags.limits_for("example.com", "https://example.com") == (10, 1, 3)


def test_from_toml_merges_file_and_overrides_and_names_the_culprit(tmp_path: Path) -> None:
    path = tmp_path / "crawl.toml"
    path.write_text(CONFIG_TOML)
    config = CrawlConfig.from_toml(path, rate=2, per_host=None, include=["/b/"])
    assert (config.rate, config.per_host, config.include) == (2, 4, ("/b/",))
    assert config.seeds == ("http://from-file.example/",)
    # An override is named by its flag (or the label given); a file's value by the file.
    with pytest.raises(ConfigError, match=r"^--concurrency must be >= 1"):
        CrawlConfig.from_toml(path, concurrency=0)
    with pytest.raises(ConfigError, match=r"^SEED: 'x' is not"):
        CrawlConfig.from_toml(None, labels={"seeds": "SEED"}, seeds=("x",))
    path.write_text("seeds = ['http://a.test/']\nburst = 0\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: burst must be >= 1"):
        CrawlConfig.from_toml(path)
    with pytest.raises(NoSeeds):
        CrawlConfig.from_toml(None, rate=2)
    assert CrawlConfig.from_toml(None, seeds=(), stay_open=True).seeds == ()


def test_every_option_in_the_table_is_a_flag_with_its_help() -> None:
    from crawler._cli import _build_parser

    actions = {a.dest: a for a in _build_parser()._actions}
    for option in OPTIONS:
        action = actions[option.name]
        assert option.flag in action.option_strings and action.help == option.full_help
    assert {o.name for o in OPTIONS} <= {f.name for f in dataclasses.fields(CrawlConfig)}


SHARED = ["--redis", "redis://127.0.0.1:9/0", "--crawl-id", "c"]
"""A shared crawl's flags (nothing listens on port 9: usage errors come first)."""


def test_shared_crawl_flags() -> None:
    assert parse_args([*SHARED, "--lease", "2.5"]).lease == 2.5
    options = parse_args(SHARED)
    assert options.lease == 30.0 and options.redis == SHARED[1] and options.crawl_id == "c"
    assert options.config.seeds == () and options.config.stay_open  # joins others' crawl


USAGE_ERRORS: list[tuple[list[str], str | None, tuple[str, ...]]] = [
    (["not a url"], None, ("SEED", "'not a url'", "not an absolute http(s) URL")),
    (["ftp://example.com/"], None, ("ftp://example.com/",)),
    ([], None, ("no seed URL",)),
    (["http://e.com/", "--scope", "planet"], None, ("--scope", "planet")),
    (["http://e.com/", "--concurrency", "lots"], None, ("--concurrency", "'lots'")),
    (["http://e.com/", "--concurrency", "0"], None, ("--concurrency must be >= 1, got 0",)),
    (["http://e.com/", "--rate", "-1"], None, ("--rate must be >= 0",)),
    (["http://e.com/", "--rate", "inf"], None, ("--rate", "finite")),
    (["http://e.com/", "--max-pages", "1.5"], None, ("--max-pages", "'1.5'")),
    (["http://e.com/", "--include", "("], None, ("include", "'('")),
    (["http://e.com/", "--bogus"], None, ("--bogus",)),
    (["http://e.com/"], "seeds = [", ("crawl.toml", "invalid TOML")),
    (["http://e.com/"], "colour = 'blue'\n", ("crawl.toml", "unknown setting(s): colour")),
    (["http://e.com/"], "per_host = 0\n", ("crawl.toml", "per_host must be >= 1")),
    (["http://e.com/"], "obey_robots = 'no'\n", ("crawl.toml", "obey_robots", "true or false")),
    (["http://e.com/"], "[hosts.'a.com']\nspeed = 1\n", ("crawl.toml", "hosts.a.com", "speed")),
    (["http://e.com/"], "[hosts.'a.com']\nrate = -2\n", ("crawl.toml", "hosts.a.com.rate")),
    (["http://e.com/"], "should_follow = 'x'\n", ("crawl.toml", "should_follow")),
    ([], "rate = 2\n", ("no seed URL", "seeds = [...]")),
    # Shared crawls: these fail before any connection to Redis.
    (["--reset"], None, ("--reset needs --redis URL",)),
    (["http://e.com/", "--lease", "5"], None, ("--lease needs --redis URL",)),
    ([*SHARED, "--lease", "0"], None, ("--lease must be > 0, got 0",)),
    ([*SHARED, "--lease", "soon"], None, ("--lease", "'soon'")),
    ([*SHARED, "--reset", "--status"], None, ("--reset and --status do not go together",)),
    ([*SHARED, "--reset", "http://e.com/"], None, ("--reset", "takes no SEED")),
    (["--redis", "redis://127.0.0.1:9/0", "--reset"], None, ("--redis needs --crawl-id",)),
    (["--redis", "redis://127.0.0.1:9/0", "--crawl-id", "a b"], None, ("--crawl-id must be",)),
]


@pytest.mark.parametrize(("argv", "toml", "needles"), USAGE_ERRORS)
def test_usage_errors_are_one_line_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    toml: str | None,
    needles: tuple[str, ...],
) -> None:
    if toml is not None:
        path = tmp_path / "crawl.toml"
        path.write_text(toml)
        argv = [*argv, "--config", str(path)]
    code = main(argv)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(Result(code, captured.out, captured.err), *needles)


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["http://e.com/", "--config", str(tmp_path / "nope.toml")])
    err = capsys.readouterr().err
    assert_one_error_line(Result(code, "", err), "cannot read config file", "nope.toml")


# ---------------------------------------------------------------------------
# The command, as a subprocess


async def test_help_lists_every_option_with_its_default() -> None:
    result = await run_crawl("--help")
    assert result.code == 0, result
    text = " ".join(result.stdout.split())  # undo argparse's line wrapping
    for option in [
        "-o, --output PATH",
        "--warc PATH",
        "--max-pages N",
        "--max-depth N",
        "--concurrency N",
        "--per-host N",
        "--rate R",
        "--burst B",
        "--scope {host,domain,any}",
        "--include REGEX",
        "--exclude REGEX",
        "--ignore-robots",
        "--sitemaps",
        "--user-agent UA",
        "--retries N",
        "--max-bytes N",
        "--timeout SECONDS",
        "--state DIR",
        "--config FILE.toml",
        "-q, --quiet",
        "-v, --verbose",
        "--version",
    ]:
        assert option in text, option
    for default in [
        "default: -)",
        "(default: 32)",  # concurrency
        "(default: 2)",  # per-host, retries
        "0 = unlimited (default: 1)",  # rate
        "(default: host)",
        "(default: 10485760 = 10 MiB)",
        "(default: 30)",
        "(default: no limit)",
        "(default: robots.txt obeyed)",
        f"(default: {DEFAULT_USER_AGENT})",
    ]:
        assert default in text, default
    assert "exit status" in text


async def test_version() -> None:
    result = await run_crawl("--version")
    assert (result.code, result.stdout.strip()) == (0, f"crawl {__version__}")


async def test_usage_error_from_the_real_command() -> None:
    result = await run_crawl("http://127.0.0.1:1/", "--scope", "planet")
    assert_one_error_line(result, "--scope", "planet")
    assert result.stdout == ""


@pytest.mark.parametrize("flag", ["-o", "--warc"])
async def test_unwritable_output_exits_1(tmp_path: Path, flag: str) -> None:
    target = tmp_path / "missing-dir" / "out.warc.gz"
    args = [flag, str(target)] + (["-o", str(tmp_path / "ok.jsonl")] if flag == "--warc" else [])
    result = await run_crawl("http://127.0.0.1:1/", *args)
    assert result.code == 1, result
    assert result.stderr.strip().splitlines() == [
        f"crawl: error: cannot write {target}: No such file or directory"
    ]


def warc_contents(path: Path) -> tuple[list[str], Counter[str], Counter[str]]:
    """Record types in order, and target URIs of response and request records."""
    from warcio.archiveiterator import ArchiveIterator

    kinds: list[str] = []
    responses: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    with open(path, "rb") as file:
        for record in ArchiveIterator(file):
            kinds.append(record.rec_type)
            uri = record.rec_headers.get_header("WARC-Target-URI")
            if record.rec_type == "response":
                responses[uri] += 1
                record.content_stream().read()
            elif record.rec_type == "request":
                requests[uri] += 1
    return kinds, responses, requests


@pytest.fixture
async def small_site() -> Any:
    async with open_site_server(ports=2, pages=40) as server:
        yield server


async def test_crawl_writes_every_reachable_page_once_and_a_warc(
    tmp_path: Path, small_site: SiteServer
) -> None:
    server = small_site
    out = tmp_path / "pages.jsonl"
    warc = tmp_path / "site.warc.gz"
    result = await run_crawl(
        server.url(0),
        server.url(1),
        "-o",
        str(out),
        "--warc",
        str(warc),
        "--rate",
        "0",
        "--concurrency",
        "8",
        "--per-host",
        "4",
    )
    assert result.code == 0, result.stderr
    assert result.stdout == ""
    pages = read_jsonl(out)
    for page in pages:
        assert list(page) == SCHEMA_KEYS  # every key, in the documented order
        assert page["error"] is None, page
        assert page["status"] == 200
        assert page["fetched_at"].endswith("Z")
        assert all(link.startswith("http://") for link in page["links"])
    urls = Counter(page["url"] for page in pages)
    assert set(urls) == server.reachable_urls()
    assert max(urls.values()) == 1  # every reachable page exactly once

    # the summary is printed even though stderr is not a terminal
    assert "crawl summary" in result.stderr
    assert f"{len(pages)} ({len(pages)} ok, 0 with errors)" in result.stderr
    assert "top hosts" in result.stderr
    assert "Traceback" not in result.stderr

    kinds, responses, requests = warc_contents(warc)
    assert kinds[0] == "warcinfo"
    robots = {server.url(0, "/robots.txt"), server.url(1, "/robots.txt")}
    assert set(responses) == server.reachable_urls() | robots
    assert max(responses.values()) == 1
    assert requests == responses


async def test_stdout_is_the_default_output(small_site: SiteServer) -> None:
    result = await run_crawl(small_site.url(0), "--max-pages", "5", "--rate", "0", "-q")
    assert result.code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 5
    assert lines[0]["url"] == small_site.url(0)
    assert result.stderr == ""  # -q: no summary


async def test_config_file_drives_a_real_crawl(tmp_path: Path, small_site: SiteServer) -> None:
    config = tmp_path / "crawl.toml"
    config.write_text(
        f'seeds = ["{small_site.url(0)}"]\nmax_pages = 50\nrate = 0\nmax_depth = 1\n'
        f'[hosts."127.0.0.1"]\nper_host = 1\n'
    )
    out = tmp_path / "pages.jsonl"
    result = await run_crawl("--config", str(config), "--max-pages", "3", "-o", str(out))
    assert result.code == 0, result.stderr
    pages = read_jsonl(out)
    assert len(pages) == 3  # the flag beat the file's max_pages
    assert {p["depth"] for p in pages} <= {0, 1}
    assert small_site.max_concurrency(0) == 1  # the per-host override took effect


async def test_verbose_logs_structured_lines(tmp_path: Path, small_site: SiteServer) -> None:
    out = tmp_path / "pages.jsonl"
    result = await run_crawl(
        small_site.url(0), "--max-pages", "3", "--rate", "0", "-v", "-o", str(out)
    )
    assert result.code == 0, result.stderr
    page_lines = [line for line in result.stderr.splitlines() if "msg=page " in line]
    assert len(page_lines) == 3
    assert all(line.startswith("ts=") and " level=info " in line for line in page_lines)
    assert f"url={small_site.url(0)}" in result.stderr

    result = await run_crawl(
        small_site.url(0), "--max-pages", "2", "--rate", "0", "-v", "--log-format", "json", "-q"
    )
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["msg"] for r in records if r["msg"] == "page"] == ["page", "page"]


@pytest.mark.parametrize(
    "extra",
    [
        {"url": "http://example.com/", "status": 200, "elapsed": 0.0123, "ok": True},
        {"title": "caf\u00e9 \u2028 \U0001f600", "error": None},
        {"broken": "x\udcff \ud800"},
        {"when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "big": 2**70},
        {"kind": ErrorKind.TIMEOUT, "hosts": ("a", "b"), "nested": {"n": [1, 2.5]}},
    ],
)
def test_json_log_lines_are_those_of_json_dumps(extra: dict[str, Any]) -> None:
    record = logging.makeLogRecord({"name": "crawler.cli", "msg": "page", **extra})
    expected = json.dumps(_record_fields(record), default=str, separators=(",", ":"))
    assert JsonFormatter().format(record) == expected


def _broken_page(request: RequestRecord) -> bytes:
    if request.path == "/robots.txt":
        return http_response(b"", status=b"404 Not Found")
    # Invalid UTF-8 and a surrogate reference in the title, raw bytes in headers.
    body = b'<title>caf\xe9 \xed\xa0\x80 &#xD800; end</title><a href="/next\xff">next</a>'
    headers = [
        (b"Content-Type", b"text/html; charset=utf-8; x=\xff\xfe\x85"),  # \x85: U+0085
        (b"X-Broken", b"\xed\xa0\x80"),
    ]
    return http_response(body, headers=headers)


async def test_a_broken_page_is_written_and_logged(tmp_path: Path) -> None:
    # Undecodable bytes in a page and its headers must not stop the crawl: the JSON
    # Lines and the JSON log stay valid UTF-8, one line per page.
    out = tmp_path / "pages.jsonl"
    async with raw_server(responder(_broken_page)) as server:
        result = await run_crawl(
            f"{server.origin()}/", "--max-pages", "2", "--rate", "0", "-o", str(out),
            "-v", "--log-format", "json", "-q",
        )  # fmt: skip
    assert result.code == 0, result.stderr
    data = out.read_bytes()
    pages = [json.loads(line) for line in data.decode("utf-8").split("\n")[:-1]]
    assert len(pages) == 2
    first = pages[0]
    assert list(first) == SCHEMA_KEYS and first["status"] == 200
    assert first["title"].startswith("caf") and first["title"].endswith("end")
    assert first["content_type"].startswith("text/html; charset=utf-8")
    assert b"\\u0085" in data and b"\xc2\x85" not in data  # a line breaker, escaped
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["url"] for r in records if r["msg"] == "page"] == [p["url"] for p in pages]


# ---------------------------------------------------------------------------
# Signals


class Running:
    """A `crawl` subprocess writing pages to a file."""

    def __init__(self, process: trio.Process, out: Path, err: Path) -> None:
        self.process = process
        self.out = out
        self.err = err

    async def wait_for_lines(self, n: int) -> None:
        with trio.fail_after(15):
            while not self.out.exists() or self.out.read_bytes().count(b"\n") < n:
                assert self.process.poll() is None, self.err.read_text()
                await trio.sleep(0.05)


def _create(path: Path) -> IO[bytes]:
    return open(path, "wb")


async def start_crawl(tmp_path: Path, *args: str) -> Running:
    out = tmp_path / "pages.jsonl"
    err = tmp_path / "stderr.txt"
    with _create(err) as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "crawler", "-o", str(out), *args],
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    return Running(process, out, err)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_signal_stops_gracefully(tmp_path: Path, signum: int, code: int) -> None:
    async with open_site_server(ports=2, pages=300) as server:
        running = await start_crawl(tmp_path, server.url(0), server.url(1), "--rate", "5")
        try:
            await running.wait_for_lines(4)
            running.process.send_signal(signum)
            with trio.fail_after(15):
                assert await running.process.wait() == code
        finally:
            if running.process.poll() is None:  # pragma: no cover - only on failure
                running.process.kill()
                await running.process.wait()
    stderr = running.err.read_text()
    assert "Traceback" not in stderr
    pages = read_jsonl(running.out)  # every line complete and valid JSON
    assert 4 <= len(pages) < 600
    assert "crawl summary" in stderr
    assert f"{signal.Signals(signum).name} (graceful stop)" in stderr
    assert "pages written" in stderr
    assert f"{len(pages):,} to " in stderr


async def test_second_sigint_stops_at_once(tmp_path: Path) -> None:
    # Every request takes 3 s: after the first SIGINT the crawl would wait for them.
    async with open_site_server(ports=1, pages=50, latency=3.0) as server:
        running = await start_crawl(
            tmp_path, server.url(0), "--rate", "0", "--per-host", "8", "--ignore-robots"
        )
        try:
            await running.wait_for_lines(1)
            running.process.send_signal(signal.SIGINT)
            await trio.sleep(0.3)
            assert running.process.poll() is None  # still letting in-flight requests finish
            running.process.send_signal(signal.SIGINT)
            start = trio.current_time()
            with trio.fail_after(10):
                assert await running.process.wait() == 130
            assert trio.current_time() - start < 2.0
        finally:
            if running.process.poll() is None:  # pragma: no cover - only on failure
                running.process.kill()
                await running.process.wait()
    stderr = running.err.read_text()
    assert "Traceback" not in stderr
    assert "SIGINT (stopped at once)" in stderr
    read_jsonl(running.out)


async def test_in_flight_requests_get_a_grace_period_then_are_cancelled(tmp_path: Path) -> None:
    # /stall never answers: after the first SIGINT the crawl waits GRACE_PERIOD, then cancels.
    from crawler._cli import GRACE_PERIOD

    async with open_site_server(ports=1, pages=5) as server:
        running = await start_crawl(
            tmp_path, server.url(0), server.url(0, "/stall"), "--rate", "0", "--ignore-robots"
        )
        try:
            await running.wait_for_lines(1)
            running.process.send_signal(signal.SIGINT)
            start = trio.current_time()
            with trio.fail_after(GRACE_PERIOD + 10):
                assert await running.process.wait() == 130
            assert GRACE_PERIOD - 0.5 < trio.current_time() - start < GRACE_PERIOD + 5
        finally:
            if running.process.poll() is None:  # pragma: no cover - only on failure
                running.process.kill()
                await running.process.wait()
    stderr = running.err.read_text()
    assert "request(s) in flight finish (up to" in stderr
    assert "cancelling" in stderr
    assert f"SIGINT (in-flight requests cancelled after {GRACE_PERIOD:g} s)" in stderr
    assert "Traceback" not in stderr
    assert all(page["url"] != server.url(0, "/stall") for page in read_jsonl(running.out))


def _read_until_eof(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side of the pty is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
async def test_progress_display_on_a_terminal(tmp_path: Path, small_site: SiteServer) -> None:
    import pty

    master, slave = pty.openpty()
    try:
        env = _env()
        env["COLUMNS"] = "120"
        args = [small_site.url(0), "--rate", "20", "--max-pages", "30"]
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "crawler", *args, "-o", str(tmp_path / "pages.jsonl")],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        with trio.fail_after(20):
            output = await trio.to_thread.run_sync(_read_until_eof, master)
            assert await process.wait() == 0
    finally:
        os.close(master)
        if slave >= 0:  # pragma: no cover - only on failure
            os.close(slave)
    text = output.decode("utf-8", "replace")
    assert "\x1b[" in text  # a live, styled display
    assert "queued" in text and "in flight" in text and "throttled" in text
    assert "/s" in text
    assert "crawl summary" in text
    assert len(read_jsonl(tmp_path / "pages.jsonl")) == 30


async def _stuck_on_stdout(tmp_path: Path, *extra: str) -> tuple[trio.Process, Path]:
    """A crawl writing pages to a stdout pipe nobody reads, once the pipe is full."""
    err = tmp_path / "stderr.txt"
    with _create(err) as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "crawler", "-o", "-", "--rate", "0", "--ignore-robots", *extra],
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,  # never read: the pipe fills and writes block
            stderr=stderr,
        )
    return process, err


@pytest.mark.parametrize(
    ("signals", "code"),
    [((signal.SIGINT, signal.SIGINT), 130), ((signal.SIGTERM, signal.SIGTERM), 143)],
)
async def test_stop_now_ends_the_process_even_with_stdout_blocked(
    tmp_path: Path, signals: tuple[int, int], code: int
) -> None:
    from crawler._cli import FORCE_EXIT_AFTER

    async with open_site_server(ports=1, pages=2000, links_per_page=20) as server:
        process, err = await _stuck_on_stdout(tmp_path, server.url(0), "--state", str(tmp_path))
        try:
            await trio.sleep(3)  # some 64 KiB of lines: the pipe is full, the writer stuck
            assert process.poll() is None, err.read_text()
            process.send_signal(signals[0])
            await trio.sleep(0.3)
            process.send_signal(signals[1])
            start = trio.current_time()
            with trio.fail_after(FORCE_EXIT_AFTER + 4):
                assert await process.wait() == code
            assert trio.current_time() - start < FORCE_EXIT_AFTER + 2
        finally:
            if process.poll() is None:  # pragma: no cover - only on failure
                process.kill()
                await process.wait()
            assert process.stdout is not None
            await process.stdout.aclose()
    stderr = err.read_text()
    assert "Traceback" not in stderr, stderr
    assert "again: stopping now." in stderr

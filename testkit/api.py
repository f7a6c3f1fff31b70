"""The controller API in the lab: a daemon with it on, and clients that run in the router's namespace.

`ApiLab(lab, tmp)` starts two ss-servers' worth of nodes is not needed for every
test: it starts the daemon with `config_text` (see `api_config`), whose API listens on
ADDRESS inside the lab's router. Clients:
- `curl(method, path, ...)`: the real curl, run in the router's namespace (status, headers, JSON);
- `python(code)`: a Python script run there with the test venv's interpreter (for PyPI clients).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daetui.control.client import call_once
from daetui.control.state import Snapshot
from daetui.lab.topology import ADDR, Lab
from testkit.configs import LAB_CHECKS
from testkit.daemon import Daemon, ns_exec

PORT = 9090
ADDRESS = f"127.0.0.1:{PORT}"
BASE = f"http://{ADDRESS}"
SECRET = "api-S3cret-t0ken"


def api_config(nodes: str = "", groups: str = "", rules: str = "", extra_global: str = "",
               secret: str = SECRET, subscriptions: str = "", dns: str = "") -> str:
    """A config for the lab's router with the controller API on ADDRESS.

    `nodes`, `groups` (whole [group.X] tables), `rules` (TOML array items),
    `subscriptions` ([subscription] lines), `dns` (a whole [dns] table).
    """
    return f"""
[global]
lan_interface = ["lan0"]
external_controller = "{ADDRESS}"
external_controller_secret = "{secret}"
{LAB_CHECKS}
check_interval = "5m"
fallback_resolver = "{ADDR.dns4[0]}:53"
{extra_global}

[node]
{nodes}

[subscription]
{subscriptions}

{groups}

{dns}

[routing]
rules = [
{rules}
]
fallback = "direct"
"""


@dataclass
class Answer:
    """What curl got: the status, the headers (lower-case names) and the body (JSON when it parses)."""

    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


class ApiLab:
    """A daemon with the controller API in the lab's router, and clients there."""

    def __init__(self, lab: Lab, directory: Path, config_text: str, secret: str = SECRET) -> None:
        self.lab = lab
        self.secret = secret
        directory.mkdir(parents=True, exist_ok=True)
        self.daemon = Daemon.from_text(lab.router, config_text, directory)

    def start(self, timeout: float = 10.0) -> ApiLab:
        """Start the daemon, and return once its API answers (it listens just after the daemon runs)."""
        self.daemon.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.curl("GET", "/version", timeout=2).status in (200, 401):
                    return self
            except AssertionError:   # nothing listens yet: curl printed no response
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the controller API did not answer within {timeout:g}s:\n{self.daemon.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.daemon.stop()

    def snapshot(self, flows: bool = False, dns: bool = False) -> Snapshot:
        """The daemon's own view, over its control socket (what the API's answers are checked against)."""
        return call_once(self.daemon.control_path, lambda c: c.snapshot(flows=flows, dns=dns))

    def curl(self, method: str, path: str, body: Any = None, *, token: str | None = None,
             headers: dict[str, str] | None = None, raw_body: str | None = None, timeout: float = 20.0,
             max_time: float | None = None) -> Answer:
        """`curl -X METHOD BASE+PATH` in the router's namespace, with the secret as a Bearer token
        (`token=""`: none; another string: that one)."""
        token = self.secret if token is None else token
        argv = ["curl", "-sS", "-X", method, "-D", "-", "--max-time", str(max_time or timeout)]
        if token:
            argv += ["-H", f"Authorization: Bearer {token}"]
        for k, v in (headers or {}).items():
            argv += ["-H", f"{k}: {v}"]
        if body is not None or raw_body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary",
                     raw_body if raw_body is not None else json.dumps(body)]
        argv.append(BASE + path)
        r = ns_exec(self.lab.router, *argv, timeout=timeout + 10)
        return parse_curl(r.stdout)

    def python(self, code: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run `code` with this interpreter in the router's namespace (BASE and SECRET in its globals)."""
        prelude = f"BASE = {BASE!r}\nSECRET = {self.secret!r}\nADDRESS = {ADDRESS!r}\n"
        return ns_exec(self.lab.router, sys.executable, "-c", prelude + code, timeout=timeout)


def parse_curl(out: str) -> Answer:
    """curl -D - output: the last response's head (1xx and redirects skipped), then the body.

    (Read as text, its CRLFs are newlines.)"""
    rest = out.replace("\r\n", "\n")
    while True:
        head, sep, body = rest.partition("\n\n")
        if not sep:
            raise AssertionError(f"no HTTP response in curl's output: {out[:300]!r}")
        lines = head.split("\n")
        status = int(lines[0].split()[1])
        if status >= 200 or not body.startswith("HTTP/"):
            break
        rest = body
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return Answer(status, headers, body)

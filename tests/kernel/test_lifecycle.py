"""Never leave the router broken: clean stop, SIGKILL (fail-open), cleanup, bad config."""

from __future__ import annotations

import signal
import subprocess

import pytest
from helpers import Daemon, assert_same_state, http_get, plane_in_lab, router_state, snapshot, udp_exchange, wait_for

from daetui.lab.topology import ADDR
from testkit.configs import RELAY_CONFIG, RELAYED4, RELAYED6

pytestmark = pytest.mark.kernel


@pytest.fixture
def config_file(daemon):
    """RELAY_CONFIG, as the daemon fixture's config file."""
    daemon.config_path.write_text(RELAY_CONFIG)
    return daemon.config_path


def whoami(lab, host: str) -> str:
    return http_get(lab, host, "/whoami", timeout=3).decode().strip()


def test_clean_stop_leaves_the_router_exactly_as_before(lab, daemon, config_file):
    before = router_state(lab)
    daemon.start()
    during = router_state(lab)
    assert "lan_ingress" in during["tc filter lan0 ingress"]
    assert "lan_egress" in during["tc filter lan0 egress"]
    assert "lookup 2024" in during["ip rule"] and "lookup 2024" in during["ip -6 rule"]
    assert whoami(lab, RELAYED4) == ADDR.router_wan4
    assert daemon.stop() == 0, daemon.log()
    assert_same_state(before, router_state(lab))
    assert "daetui stopped; system changes undone" in daemon.log()
    assert not (daemon.run_dir / "state.json").exists()
    assert not (daemon.run_dir / "daetui.pid").exists()


def test_sigint_stops_cleanly_too(lab, daemon, config_file):
    before = router_state(lab)
    daemon.start()
    daemon.signal(signal.SIGINT)
    assert daemon.wait() == 0
    assert_same_state(before, router_state(lab))


def test_sigkill_fails_open_and_cleanup_undoes_the_rest(lab, daemon, config_file):
    before = router_state(lab)
    daemon.start()
    assert whoami(lab, RELAYED4) == ADDR.router_wan4  # relayed by the daemon
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    # The programs are still attached, but with no listener the flow passes as direct.
    assert "lan_ingress" in router_state(lab)["tc filter lan0 ingress"]
    assert whoami(lab, RELAYED4) == ADDR.client4
    assert whoami(lab, RELAYED6) == ADDR.client6
    assert udp_exchange(lab, RELAYED4, b"still there?") == [b"still there?"]
    out = daemon.cli("cleanup")
    assert out.returncode == 0, out.stderr
    assert "undone: tc filter ingress on lan0" in out.stdout
    assert_same_state(before, router_state(lab))
    # Nothing left to undo a second time.
    again = daemon.cli("cleanup")
    assert again.returncode == 0 and "nothing to undo" in again.stdout


def test_next_start_cleans_up_after_a_crash(lab, daemon, config_file):
    before = router_state(lab)
    daemon.start()
    daemon.signal(signal.SIGKILL)
    daemon.wait()
    d2 = Daemon(lab, config_file, daemon.run_dir).start()
    try:
        assert "cleaned up after a daemon that did not stop" in d2.log()
        assert whoami(lab, RELAYED4) == ADDR.router_wan4
        assert router_state(lab)["tc filter lan0 ingress"].count("handle 0xda7") == 1
    finally:
        assert d2.stop() == 0
    assert_same_state(before, router_state(lab))


def test_a_second_daemon_in_the_same_run_dir_is_refused(lab, daemon, config_file):
    daemon.start()
    out = daemon.cli("--no-ui", "--config", str(config_file))  # a second one, same run dir
    assert out.returncode == 1
    assert "already running" in out.stderr
    assert whoami(lab, RELAYED4) == ADDR.router_wan4  # the first one is untouched
    assert daemon.stop() == 0


def test_config_error_names_the_place_and_starts_nothing(lab, daemon):
    before = router_state(lab)
    bad = daemon.config_path
    bad.write_text(RELAY_CONFIG.replace("-> proxy", "-> proxy)"))
    line, text = next((n, ln) for n, ln in enumerate(bad.read_text().splitlines(), 1) if "proxy)" in ln)
    column = text.index("proxy)") + len("proxy)")  # the stray parenthesis, counted from 1
    out = daemon.cli("--no-ui", "--config", str(bad))
    assert out.returncode == 2
    assert f"{bad}:{line}:{column}:" in out.stderr and "expected the end of the rule" in out.stderr
    assert_same_state(before, router_state(lab))
    assert not daemon.run_dir.exists()


def test_missing_lan_interface_is_reported_and_the_rest_bound(lab, daemon):
    daemon.config_path.write_text(RELAY_CONFIG.replace('["lan0"]', '["lan0", "nosuch0"]'))
    before = router_state(lab)
    daemon.start()
    assert "LAN interface nosuch0 does not exist" in daemon.log()
    assert whoami(lab, RELAYED4) == ADDR.router_wan4
    assert daemon.stop() == 0
    assert_same_state(before, router_state(lab))


def test_what_daetui_did_not_add_is_left_alone(lab, daemon, config_file):
    """A clsact someone else made, their rules and routes: all still there after stop and cleanup."""
    ns = lab.router
    foreign = [
        ["tc", "qdisc", "add", "dev", "lan0", "clsact"],
        ["ip", "rule", "add", "fwmark", "0x1", "lookup", "100", "pref", "1000"],
        ["ip", "route", "add", "local", "10.99.0.0/16", "dev", "lo", "table", "2024"],
    ]
    for argv in foreign:
        subprocess.run(["ip", "netns", "exec", ns, *argv], check=True)
    try:
        before = router_state(lab)
        daemon.start()
        assert whoami(lab, RELAYED4) == ADDR.router_wan4
        assert daemon.stop() == 0
        assert_same_state(before, router_state(lab))
        # And after a crash, cleanup is just as careful.
        d = Daemon(lab, config_file, daemon.run_dir).start()
        d.signal(signal.SIGKILL)
        d.wait()
        assert d.cli("cleanup").returncode == 0
        assert_same_state(before, router_state(lab))
        assert "clsact" in before["tc qdisc lan0"]
    finally:
        for argv in (["tc", "qdisc", "del", "dev", "lan0", "clsact"],
                     ["ip", "rule", "del", "pref", "1000", "fwmark", "0x1"],
                     ["ip", "route", "del", "local", "10.99.0.0/16", "dev", "lo", "table", "2024"]):
            subprocess.run(["ip", "netns", "exec", ns, *argv], check=False)


def test_an_interface_that_appears_later_is_bound_and_one_that_goes_is_forgotten(lab, tmp_path):
    before = router_state(lab)
    text = RELAY_CONFIG.replace('["lan0"]', '["lan0", "late0"]')
    with plane_in_lab(lab, text, tmp_path / "run") as plane:
        assert snapshot(plane).missing_interfaces == ("late0",)
        subprocess.run(["ip", "-n", lab.router, "link", "add", "name", "late0", "type", "veth", "peer", "name",
                        "late0p"], check=True)
        subprocess.run(["ip", "-n", lab.router, "link", "set", "late0", "up"], check=True)
        bound = wait_for(lambda: [i for i in snapshot(plane).bindings if i.name == "late0"], timeout=10)
        assert bound[0].programs and "late0" not in snapshot(plane).missing_interfaces
        assert "lan_ingress" in router_state(lab)["tc filter late0 ingress"]
        subprocess.run(["ip", "-n", lab.router, "link", "del", "late0"], check=True)
        wait_for(lambda: snapshot(plane).missing_interfaces == ("late0",), timeout=10)
        assert [i.name for i in snapshot(plane).bindings] == ["lan0"]
        assert whoami(lab, RELAYED4) == ADDR.router_wan4  # still routing
    assert_same_state(before, router_state(lab))

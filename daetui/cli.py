"""The `daetui` command.

    daetui [run] --no-ui [--config F] [--run-dir D]   the control plane, headless
    daetui validate FILE                               check a config, touch nothing
    daetui cleanup [--run-dir D]                       undo what a crashed daemon left
    daetui lab up|down|status [--name N]               the namespace lab
    daetui [--config F]                                the console, with a daemon of its own if none runs
    daetui attach | status | stop [--run-dir D]        the console / state / stop, for a running daemon
    daetui demo [--no-ui] [--down]                     the lab, daetui in it, traffic, and the console
    daetui doctor [--config F]                         what this machine has and lacks for daetui
    daetui install-service [--dry-run] [--root D]      write the systemd unit
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from daetui import aio
from daetui.config.errors import ConfigError
from daetui.config.load import Config, load_config
from daetui.logsetup import setup_logging
from daetui.paths import RunPaths
from daetui.redact import redact
from daetui.service import notify
from daetui.termtext import printable_lines

DEFAULT_CONFIG = "/etc/daetui/config.toml"
log = logging.getLogger("daetui")


def _load(path: str) -> Config | None:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        print(f"daetui: {e}", file=sys.stderr)
        return None
    for w in cfg.warnings:
        print(f"daetui: warning: {w}", file=sys.stderr)
    return cfg


def _run_paths(args: argparse.Namespace) -> RunPaths:
    return RunPaths.for_here(args.run_dir)


async def _serve(config: Config, run: RunPaths) -> int:
    from daetui.control.plane import ControlPlane, StartError
    from daetui.control.server import ControlServer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A headless daemon outlives the terminal it was started from.
    loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP: daetui keeps running"))
    plane = ControlPlane(config, run)
    reloads: set[asyncio.Task[object]] = set()

    def on_usr1() -> None:
        log.info("SIGUSR1: reloading %s", config.source)
        t = asyncio.ensure_future(plane.reload_from_file())
        reloads.add(t)
        t.add_done_callback(reloads.discard)
    loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    plane.on_stop_request = stop.set
    server = ControlServer(plane, run.control)
    api = None
    try:
        await plane.claim()
        # Listening before the (slow) start: a console can watch it start.
        await server.start()
        await plane.start()
    except StartError as e:
        log.error("could not start: %s", e)
        await server.stop()
        return 1
    g = config.global_
    if g.external_controller:
        from daetui.api.server import ApiServer

        api = ApiServer(plane, g.external_controller, g.external_controller_secret, g.external_controller_cors)
        await api.start()
    notify.ready(f"running: tproxy port {config.global_.tproxy_port}")  # systemd's Type=notify; else nothing
    watchdog = notify.start_watchdog()
    await stop.wait()
    notify.stopping()
    if watchdog is not None:
        watchdog.cancel()
    if api is not None:
        await api.stop()
    await plane.stop()
    await server.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 2
    if not args.no_ui:
        from daetui.ui.launch import run_console

        return run_console(_run_paths(args), args.config, theme=args.theme)
    setup_logging(cfg.global_.log_level, file=args.log_file)
    return aio.run(_serve(cfg, _run_paths(args)))


def cmd_attach(args: argparse.Namespace) -> int:
    from daetui.ui.launch import run_console

    return run_console(_run_paths(args), None, theme=args.theme)


def cmd_status(args: argparse.Namespace) -> int:
    from daetui.ui.launch import status

    return status(_run_paths(args), as_json=args.json)


def cmd_explain(args: argparse.Namespace) -> int:
    """Ask the running daemon (it knows what DNS said); without one, read the config file."""

    from daetui.control.client import ControlError, call_once
    from daetui.routing.explain import ExplainError, Query, explain

    q = Query(args.target, args.port, args.proto, args.mac, args.iface, args.wan, args.pname, args.src, args.dscp,
              args.sport)
    run = _run_paths(args)
    if not args.offline and run.control.exists():
        try:
            result = call_once(run.control, lambda c: c.explain(
                target=q.target, port=q.port, proto=q.proto, mac=q.mac, iface=q.iface, pname=q.pname, src=q.src,
                sport=q.sport, dscp=q.dscp, wan=q.wan))
            print(f"(asked the running daetui, {run.control})")
            print(printable_lines(result.text))  # it names what DNS and sniffing saw: shown, never obeyed
            return 0
        except ControlError as e:
            if "ExplainError" in str(e):
                print(f"daetui explain: {printable_lines(str(e).split(': ', 1)[-1])}", file=sys.stderr)
                return 2
            print(f"daetui explain: no daemon answers ({printable_lines(e)}); reading {args.config}",
                  file=sys.stderr)
    cfg = _load(args.config)
    if cfg is None:
        return 2
    try:
        print(printable_lines(explain(cfg.routing, q, unknown_domain=cfg.global_.unknown_domain).text))
    except ExplainError as e:
        print(f"daetui explain: {printable_lines(e)}", file=sys.stderr)
        return 2
    return 0


def cmd_import_dae(args: argparse.Namespace) -> int:
    from daetui.config.dae_import import DaeImportError, convert_dae_file
    from daetui.config.load import load_config
    from daetui.outbound.links import link_problem

    src = Path(args.file)
    out = Path(args.output) if args.output else None
    if out is not None and out.exists() and not args.force:
        print(f"daetui import-dae: {out} exists (--force replaces it)", file=sys.stderr)
        return 1
    try:
        conv = convert_dae_file(src, check_link=link_problem)
    except OSError as e:
        print(f"daetui import-dae: {src}: {e.strerror}", file=sys.stderr)
        return 1
    except DaeImportError as e:
        print(f"daetui import-dae: {redact(e)}", file=sys.stderr)
        return 1
    # Checked as the file it becomes, so geoip/geosite are looked for next to it; an error is told
    # at the place in the dae files it comes from (the TOML may never be written).
    target = Path(args.output) if args.output else src.with_suffix(".toml")
    try:
        cfg = load_config(target, overrides={str(target.resolve()): conv.text})
    except ConfigError as e:
        where = conv.locate(e.path)
        at = f"{where[0]}:{where[1]}:{where[2]}" if where else str(src)
        print(f"daetui import-dae: {redact(at)}: {e.message}", file=sys.stderr)
        return 1
    if out is not None:
        from daetui.config.edit import write_atomic

        write_atomic(out, conv.text, backup=out.exists())
        out.chmod(0o600)  # it holds proxy links
        print(f"wrote {out}: {len(cfg.routing.entries)} rules, {len(cfg.nodes)} nodes, {len(cfg.groups)} groups"
              + (f"; {len(conv.left_out)} nodes left out" if conv.left_out else ""))
    else:
        sys.stdout.write(conv.text)
    for w in (*conv.warnings, *(w for w in cfg.warnings if str(target) not in w)):
        print(f"daetui import-dae: warning: {redact(w)}", file=sys.stderr)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from daetui.ui.launch import reload_daemon

    return reload_daemon(_run_paths(args), abort=args.abort)


def cmd_stop(args: argparse.Namespace) -> int:
    from daetui.ui.launch import stop_daemon

    return stop_daemon(_run_paths(args))


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    if cfg is None:
        return 1
    from daetui.routing.compile import CompileError, compile_rules

    try:
        kr = compile_rules(cfg.routing)
    except CompileError as e:
        print(f"daetui: {cfg.source}: {e}", file=sys.stderr)
        return 1
    # Nodes' links were judged by the loader (set_link_check in main): a bad one failed _load.
    r = cfg.routing
    print(f"{cfg.source}: ok: {len(r.entries)} rules ({len(r.enabled)} enabled), "
          f"{len(kr.match_sets)} kernel match sets, {len(cfg.nodes)} nodes, fallback {r.fallback}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from daetui.dataplane.cleanup import cleanup_leftovers
    from daetui.dataplane.journal import JournalError

    setup_logging("info")
    run = _run_paths(args)
    try:
        undone = cleanup_leftovers(run.state)
    except JournalError as e:
        print(f"daetui cleanup: {e}", file=sys.stderr)
        return 1
    if not undone:
        print(f"daetui cleanup: nothing to undo ({run.state} is absent)")
    for line in undone:
        print(f"undone: {line}")
    run.pid.unlink(missing_ok=True)
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from daetui.lab.topology import Lab, LabError

    lab = Lab(args.name)
    try:
        if args.action == "up":
            lab.up()
            print(lab.status())
        elif args.action == "down":
            lab.down()
            print(f"lab {args.name}: down")
        else:
            print(lab.status())
    except LabError as e:
        print(f"daetui lab: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from daetui.lab.demo import demo_down, run_demo

    if args.down:
        return demo_down(args.name)
    return run_demo(duration=args.duration, lab_name=args.name, ui=not args.no_ui, theme=args.theme)


def cmd_doctor(args: argparse.Namespace) -> int:
    from daetui.doctor.report import exit_code, format_report
    from daetui.doctor.run import machine_line, run_checks

    print(machine_line(), flush=True)
    checks = run_checks(args.config, explicit=args.config != DEFAULT_CONFIG, run_dir=args.run_dir)
    print(format_report(checks))
    return exit_code(checks)


def cmd_install_service(args: argparse.Namespace) -> int:
    from daetui.service.unit import UnitError, install_unit, render_unit

    try:
        text = render_unit(args.config)
        if args.dry_run:
            sys.stdout.write(text)
            return 0
        path = install_unit(text, Path(args.root), force=args.force)
    except (UnitError, OSError) as e:
        print(f"daetui install-service: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    if not Path(args.config).exists():
        print(f"daetui install-service: warning: {args.config} does not exist yet; the service needs it",
              file=sys.stderr)
    if Path(args.root).resolve() == Path("/"):
        print("then: systemctl daemon-reload && systemctl enable --now daetui")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="daetui", description="Transparent proxy for Linux routers, with a console.")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    p.add_argument("--no-ui", action="store_true", help="run headless (as a service)")
    p.add_argument("--run-dir", help="runtime files (default /run/daetui, per network namespace)")
    p.add_argument("--theme", help="console theme: dark, light or basic (16 colours)")
    p.add_argument("--log-file", help="with --no-ui: log to this file, rotated (default: stderr)")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="run the control plane (the default)")
    r.add_argument("--config", "-c", default=argparse.SUPPRESS)
    r.add_argument("--no-ui", action="store_true", default=argparse.SUPPRESS)
    r.add_argument("--run-dir", default=argparse.SUPPRESS)
    r.add_argument("--theme", default=argparse.SUPPRESS)
    r.add_argument("--log-file", default=argparse.SUPPRESS)
    a = sub.add_parser("attach", help="open the console on a running daemon")
    a.add_argument("--run-dir", default=argparse.SUPPRESS)
    a.add_argument("--theme", default=argparse.SUPPRESS)
    st = sub.add_parser("status", help="print the running daemon's state")
    st.add_argument("--run-dir", default=argparse.SUPPRESS)
    st.add_argument("--json", action="store_true")
    sp = sub.add_parser("stop", help="stop the running daemon (undoing its changes)")
    sp.add_argument("--run-dir", default=argparse.SUPPRESS)
    ex = sub.add_parser("explain", help="why a flow goes where it goes, rule by rule")
    ex.add_argument("target", help="a domain, an address, or address:port / [v6]:port / domain:port")
    ex.add_argument("--port", type=int, help="destination port")
    ex.add_argument("--proto", default="tcp", choices=["tcp", "udp"])
    ex.add_argument("--mac", help="the LAN client's MAC")
    ex.add_argument("--iface", help="the LAN interface it comes in on")
    ex.add_argument("--pname", help="a process name (the router's own traffic)")
    ex.add_argument("--src", help="the client's address")
    ex.add_argument("--sport", type=int, help="the client's port")
    ex.add_argument("--dscp", type=int, default=0, help="the packets' DSCP (0-63)")
    ex.add_argument("--wan", help="the interface the flow would leave by")
    ex.add_argument("--offline", action="store_true", help="read the config file, do not ask the daemon")
    ex.add_argument("--config", "-c", default=argparse.SUPPRESS)
    ex.add_argument("--run-dir", default=argparse.SUPPRESS)
    im = sub.add_parser("import-dae", help="convert a dae config to daetui's TOML")
    im.add_argument("file")
    im.add_argument("-o", "--output", help="write here (mode 600) instead of to stdout")
    im.add_argument("--force", action="store_true", help="replace --output if it exists")
    rl = sub.add_parser("reload", help="reload the running daemon's config file (flows keep their route)")
    rl.add_argument("--abort", action="store_true", help="reset the flows whose route changes")
    rl.add_argument("--run-dir", default=argparse.SUPPRESS)
    v = sub.add_parser("validate", help="check a config file without touching the system")
    v.add_argument("file")
    c = sub.add_parser("cleanup", help="undo what a daemon that crashed left behind")
    c.add_argument("--run-dir", default=argparse.SUPPRESS)
    lab = sub.add_parser("lab", help="the namespace lab: up, down, status")
    lab.add_argument("action", choices=["up", "down", "status"])
    lab.add_argument("--name", default="dtlab")
    d = sub.add_parser("demo", help="the lab, daetui in it, traffic, and the console on it")
    d.add_argument("--no-ui", action="store_true", default=argparse.SUPPRESS,
                   help="print the connection log instead of opening the console")
    d.add_argument("--duration", type=float, default=0, help="with --no-ui: seconds (default: until Ctrl-C)")
    d.add_argument("--down", action="store_true", help="stop a demo left running and take its lab down")
    d.add_argument("--name", default="dtlab")
    d.add_argument("--theme", default=argparse.SUPPRESS)
    dr = sub.add_parser("doctor", help="check what this machine has and lacks for daetui (exit 1 on a blocker)")
    dr.add_argument("--config", "-c", default=argparse.SUPPRESS)
    dr.add_argument("--run-dir", default=argparse.SUPPRESS)
    sv = sub.add_parser("install-service", help="write the systemd unit (daetui.service) for this daetui")
    sv.add_argument("--config", "-c", default=argparse.SUPPRESS)
    sv.add_argument("--dry-run", action="store_true", help="print the unit instead of writing it")
    sv.add_argument("--root", default="/", help="write under ROOT/etc/systemd/system (default /)")
    sv.add_argument("--force", action="store_true", help="replace a unit that differs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cmd = args.command or "run"
    # Every config this process loads has its nodes' links judged by the dialers that will use them.
    from daetui.config.load import set_link_check
    from daetui.outbound.links import link_problem

    set_link_check(link_problem)
    handlers = {"run": cmd_run, "validate": cmd_validate, "cleanup": cmd_cleanup, "lab": cmd_lab,
                "demo": cmd_demo, "attach": cmd_attach, "status": cmd_status, "stop": cmd_stop,
                "reload": cmd_reload, "explain": cmd_explain, "import-dae": cmd_import_dae,
                "doctor": cmd_doctor, "install-service": cmd_install_service}
    return handlers[cmd](args)


if __name__ == "__main__":
    sys.exit(main())

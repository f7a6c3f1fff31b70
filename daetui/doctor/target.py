"""What the doctor checks the machine for: the interfaces and numbers of a config, or none."""

from __future__ import annotations

from dataclasses import dataclass

from daetui.config.load import Config
from daetui.config.schema import DEFAULT_SO_MARK, TPROXY_MARK
from daetui.paths import RunPaths, pid_is_daetui


@dataclass(frozen=True)
class Target:
    """The parts of a config the checks read; the defaults when there is no config."""

    run: RunPaths
    lan: tuple[str, ...] = ()
    wan: tuple[str, ...] = ()
    configured: bool = False
    auto_config: bool = True
    tproxy_port: int = 12345
    so_mark: int = DEFAULT_SO_MARK

    @classmethod
    def from_config(cls, cfg: Config, run: RunPaths) -> Target:
        g = cfg.global_
        return cls(run, g.lan_interface, g.wan_interface, True, g.auto_config_kernel_parameter, g.tproxy_port,
                   g.so_mark_from_dae)

    @property
    def interfaces(self) -> tuple[str, ...]:
        """The LAN and WAN interfaces, each once."""
        return tuple(dict.fromkeys(self.lan + self.wan))

    @property
    def marks(self) -> int:
        """The mark bits daetui uses: another program setting them confuses its routing."""
        return TPROXY_MARK | self.so_mark

    def running_pid(self) -> int | None:
        """The pid of a daetui running with this run dir, if one does."""
        try:
            pid = int(self.run.pid.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_is_daetui(pid) else None

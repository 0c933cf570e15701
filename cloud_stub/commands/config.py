"""Remote configuration, commit-confirmed: ``get``, ``push FILE|DIR``, ``history``."""

from __future__ import annotations

from edgegw_cloud.devmgmt_cli import add_config_arguments as add_arguments
from edgegw_cloud.devmgmt_cli import cmd_config as run

HELP = "remote configuration, commit-confirmed (get | push | history)"
__all__ = ["HELP", "add_arguments", "run"]

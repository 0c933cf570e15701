"""Device shadow: ``get`` prints desired / reported / delta; ``set`` changes desired values."""

from __future__ import annotations

from edgegw_cloud.devmgmt_cli import add_shadow_arguments as add_arguments
from edgegw_cloud.devmgmt_cli import cmd_shadow as run

HELP = "device shadow: desired / reported / delta (get | set)"
__all__ = ["HELP", "add_arguments", "run"]

"""Run a command on a gateway's device and print its one final result (device management)."""

from __future__ import annotations

from edgegw_cloud.devmgmt_cli import add_command_arguments as add_arguments
from edgegw_cloud.devmgmt_cli import cmd_command as run

HELP = "run a command on a gateway's device (write, read, ping, driver actions); prints the result"
__all__ = ["HELP", "add_arguments", "run"]

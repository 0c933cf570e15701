"""Modbus driver (TCP, RTU, RTU-over-TCP): register coalescing, typed decoding, writes.

Public names: ``ModbusDriver`` (entry point ``modbus``), ``ModbusOptions``, ``ModbusPoint``.
See README.md in this folder for every option.
"""

from edgegw.drivers.modbus.driver import ModbusDriver
from edgegw.drivers.modbus.options import ModbusOptions, ModbusPoint

__all__ = ["ModbusDriver", "ModbusOptions", "ModbusPoint"]

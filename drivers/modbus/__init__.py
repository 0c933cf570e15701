"""Modbus driver (TCP, RTU, RTU-over-TCP): register coalescing, typed decoding, writes.

Public names: ``ModbusDriver`` (entry point ``modbus``), ``ModbusOptions``, ``ModbusPoint``.
See README.md in this folder for every option.
"""

from drivers.modbus.driver import ModbusDriver
from drivers.modbus.options import ModbusOptions, ModbusPoint

__all__ = ["ModbusDriver", "ModbusOptions", "ModbusPoint"]

"""modbus driver."""

"""serial driver."""

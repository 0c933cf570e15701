"""Device management from the cloud (gateway side): the authenticated downlink service, and the
features riding on it: commands, device shadow, remote configuration (commit-confirmed).

See docs/device-management.md. ``downlink.DownlinkService`` is the transport; features register
one handler per message kind (``service.register(kind, handler)``).
"""

"""Device management from the cloud (gateway side): the authenticated downlink service, and the
features riding on it: commands, device shadow, remote configuration (commit-confirmed).

See docs/device-management.md. Modules: ``downlink`` (``DownlinkService``, the transport;
features register one handler per message kind with ``service.register(kind, handler)``),
``state`` (``devmgmt.db``: replay window, command ids, shadows), ``commands``, ``shadow``,
``remote_config``, ``config_apply`` (the reusable commit-confirmed mechanism for config
bundles), ``manager`` (wires the features), ``host`` (the narrow ``GatewayHost`` interface the
runtime implements: this package never imports the runtime or the config module).
"""

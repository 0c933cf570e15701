"""The ONE definition of everything the gateway and the cloud share (cloud_stub imports it).

- ``model``: Sample, Alert, Quality, Lane (the SDK re-exports them as ``edgegw.model``).
- ``codec``: columnar batch <-> bytes (snappy-compressed, versioned).
- ``envelope``: AES-256-GCM sealed batch with a clear binary header.
- ``keys``: ECDH + HKDF data-key derivation and the ``Sealer``.
- ``ack``: end-to-end acknowledgement messages; ``downlink``: cloud -> gateway messages.
- ``topics``: every MQTT topic and the broker ACL's filters.
- ``enrollment``: enrollment request/answer messages.
- ``identity``: the gateway identity-dir layout.
- ``broker_url``: the broker-URL grammar; ``ids``: the gateway/device id grammar.
- ``suggest``: the one "did you mean" helper.

Import the submodule you need (``from edgegw.protocol.codec import encode_batch``): this package
imports nothing eagerly, so the light parts (model, ids, topics) stay light for the SDK.
"""

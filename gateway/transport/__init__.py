"""Transport helpers shared by the gateway and the cloud stub (not wire format: that is
``edgegw.protocol``). Today: ``mqtt_client.Client``, paho's client with a failed TLS handshake's
socket closed and TCP_NODELAY set. Imports nothing of edgegw; ``edgegw_cloud`` may import it
(docs/architecture.md)."""

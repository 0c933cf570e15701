"""The cloud's HTTP side: JSON API (OpenAPI) + web dashboard, served by ``edgegw-cloud serve
--http ADDR:PORT`` over TLS with the cloud's own CA. See docs/operator-guide.md."""

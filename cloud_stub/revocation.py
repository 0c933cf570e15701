"""Revocation: registry flag + CRL file. The serve process notices the new CRL and reloads.

Invariants:
- ``crl.pem`` always lists every revoked certificate serial of the registry and is re-signed
  with a fresh ``next_update`` (``CRL_DAYS``) on every change and by ``serve`` at start and daily:
  OpenSSL refuses ALL clients once the broker's CRL has expired.
- ``revoke_gateway`` commits the registry first, then writes the CRL (atomically): a crash in
  between is repaired by the next ``refresh_crl`` (serve start), never leaves a gateway half
  revoked in the registry.
"""

from __future__ import annotations

from edgegw import pki
from edgegw_cloud.pki_setup import CloudPaths
from edgegw_cloud.registry import Registry

CRL_DAYS = 30
CRL_REFRESH_S = 24 * 3600.0


def refresh_crl(paths: CloudPaths) -> int:
    """Rewrite crl.pem from the registry; returns the number of revoked serials."""
    issuer = pki.Issuer.load(paths.ca_crt, paths.ca_key)
    with Registry(paths.registry_db) as reg:
        revoked = reg.revoked_serials()
    pki.write_public(paths.crl, pki.crl_pem(issuer.crl(revoked, days=CRL_DAYS)))
    return len(revoked)


def revoke_gateway(paths: CloudPaths, gateway_id: str) -> list[str]:
    """Revoke ``gateway_id`` (registry + CRL); returns the serials revoked by this call."""
    with Registry(paths.registry_db) as reg:
        serials = reg.revoke(gateway_id)
    refresh_crl(paths)
    return serials

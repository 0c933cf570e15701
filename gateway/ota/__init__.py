"""Gateway updater: release verification, A/B slots with a health-gated trial, firmware updates.

- ``verify``: signature, target, replay, downgrade, chunk/file hashes, archive paths.
- ``launcher``: the standalone boot-counter launcher (stdlib only) systemd runs.
- ``slots``: offline install of a software bundle into a new slot, ``edgegw check``, trial.
- ``trial``: the health gate the new version runs before it commits.
"""

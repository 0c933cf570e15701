"""Package-data marker: the wheel carries these unit files as ``edgegw.share.systemd``
(``edgegw init --systemd DIR`` writes them out)."""

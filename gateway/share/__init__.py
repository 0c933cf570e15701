"""Data shipped inside the package: ``edgegw.share.examples`` (the repository's examples/*.yaml)
and ``edgegw.share.systemd`` (systemd/ units), mapped by pyproject's package-dir; read with
importlib.resources (``edgegw init``)."""

"""LazyFS-style power-cut file system (FUSE, mfusepy): what was not fsynced is lost on "cut".

Run as a script: ``python lazyfs.py BACKING_DIR MOUNTPOINT`` (foreground until unmounted with
``fusermount3 -u MOUNTPOINT``). Every file of the mount lives in BACKING_DIR, but file DATA
written through the mount is kept in memory (4 KiB pages, per file, plus the logical size) until
the file is fsynced (fsync or fdatasync): only then is it written to the backing file and the
backing file fsynced. Writing ``cut`` to the control file ``/.lazyfs-ctl`` drops every
unsynced page and size change of every file, as a power cut drops a disk's volatile cache and
the kernel's dirty pages. Reading the control file returns JSON counters.

Simplification (stated in docs/delivery.md): metadata operations (create, unlink, rename,
mkdir, chmod) reach the backing directory at once, i.e. they behave as if the directory were
fsynced right after them. SQLite in WAL mode, the code under test, relies on file data fsyncs,
which this layer models exactly. The kernel's page cache is bypassed for correctness after a
cut: attributes are never cached (``attr_timeout=0``) and the cache is dropped at every open
(the libfuse default without ``kernel_cache``); the test kills every process using the mount
before it cuts.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from typing import Any

import mfusepy

PAGE = 4096
CTL = "/.lazyfs-ctl"


class _File:
    __slots__ = ("pages", "size")

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}
        self.size: int | None = None  # logical size if it differs from the backing file's


class LazyFS(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True
    def __init__(self, backing: str) -> None:
        self.root = os.path.realpath(backing)
        self.files: dict[str, _File] = {}
        self._mu = threading.RLock()
        self.stats = {"cuts": 0, "fsyncs": 0, "dropped_bytes": 0, "synced_bytes": 0}
        self._ctl_out = b""

    # ------------------------------------------------------------------ helpers
    def _b(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _backing_size(self, path: str) -> int:
        try:
            return os.stat(self._b(path)).st_size
        except FileNotFoundError:
            raise mfusepy.FuseOSError(errno.ENOENT) from None

    def _size(self, path: str) -> int:
        f = self.files.get(path)
        if f is not None and f.size is not None:
            return f.size
        return self._backing_size(path)

    def _page(self, path: str, f: _File, idx: int) -> bytearray:
        page = f.pages.get(idx)
        if page is None:
            with open(self._b(path), "rb") as fh:
                fh.seek(idx * PAGE)
                page = bytearray(fh.read(PAGE))
            size = self._size(path)
            keep = max(0, min(PAGE, size - idx * PAGE))
            del page[keep:]
            page.extend(b"\0" * (PAGE - len(page)))
            f.pages[idx] = page
        return page

    # ------------------------------------------------------------------ metadata
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path == CTL:
            return {"st_mode": 0o100666, "st_nlink": 1, "st_size": 4096}
        with self._mu:
            try:
                st = os.lstat(self._b(path))
            except FileNotFoundError:
                raise mfusepy.FuseOSError(errno.ENOENT) from None
            d = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid",
                                             "st_atime", "st_mtime", "st_ctime")}
            f = self.files.get(path)
            d["st_size"] = f.size if f is not None and f.size is not None else st.st_size
            return d

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *os.listdir(self._b(path))]

    def access(self, path: str, amode: int) -> int:
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.root)
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                            "f_favail", "f_ffree", "f_files", "f_flag",
                                            "f_frsize", "f_namemax")}

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._b(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._b(path), uid, gid)
        return 0

    def utimens(self, path: str, times: Any = None) -> int:
        os.utime(self._b(path), times)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._b(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._b(path))
        return 0

    def unlink(self, path: str) -> int:
        with self._mu:
            os.unlink(self._b(path))
            self.files.pop(path, None)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._mu:
            os.rename(self._b(old), self._b(new))
            f = self.files.pop(old, None)
            self.files.pop(new, None)
            if f is not None:
                self.files[new] = f
        return 0

    # ------------------------------------------------------------------ data
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self._mu:
            fd = os.open(self._b(path), os.O_WRONLY | os.O_CREAT, mode)
            os.close(fd)
        return 0

    def open(self, path: str, flags: int) -> int:
        if path != CTL and not os.path.exists(self._b(path)):
            raise mfusepy.FuseOSError(errno.ENOENT)
        if path != CTL and flags & os.O_TRUNC:
            self.truncate(path, 0)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if path == CTL:
            with self._mu:
                out = json.dumps(self.stats | {"dirty_files": len(self.files)}).encode()
            return out[offset:offset + size]
        with self._mu:
            f = self.files.get(path)
            total = self._size(path)
            end = min(offset + size, total)
            if offset >= end:
                return b""
            if f is None or not f.pages:
                with open(self._b(path), "rb") as fh_:
                    fh_.seek(offset)
                    data = fh_.read(end - offset)
                return data + b"\0" * (end - offset - len(data))
            out = bytearray()
            pos = offset
            while pos < end:
                idx, off = divmod(pos, PAGE)
                n = min(PAGE - off, end - pos)
                page = f.pages.get(idx)
                if page is not None:
                    out += page[off:off + n]
                else:
                    with open(self._b(path), "rb") as fh_:
                        fh_.seek(pos)
                        chunk = fh_.read(n)
                    out += chunk + b"\0" * (n - len(chunk))
                pos += n
            return bytes(out)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if path == CTL:
            if data.strip() == b"cut":
                self.power_cut()
            return len(data)
        with self._mu:
            f = self.files.setdefault(path, _File())
            size = self._size(path)
            pos = 0
            while pos < len(data):
                idx, off = divmod(offset + pos, PAGE)
                n = min(PAGE - off, len(data) - pos)
                page = self._page(path, f, idx)
                page[off:off + n] = data[pos:pos + n]
                pos += n
            f.size = max(size, offset + len(data))
        return len(data)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        if path == CTL:
            return 0
        with self._mu:
            f = self.files.setdefault(path, _File())
            old = self._size(path)
            for idx in [i for i in f.pages if i * PAGE >= length]:
                del f.pages[idx]
            if length % PAGE and length < old:
                page = self._page(path, f, length // PAGE)
                page[length % PAGE:] = b"\0" * (PAGE - length % PAGE)
            f.size = length
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        if path == CTL:
            return 0
        with self._mu:
            f = self.files.pop(path, None)
            if f is None:
                return 0
            fd = os.open(self._b(path), os.O_WRONLY)
            try:
                size = f.size if f.size is not None else os.fstat(fd).st_size
                for idx, page in sorted(f.pages.items()):
                    n = max(0, min(PAGE, size - idx * PAGE))
                    if n:
                        os.pwrite(fd, bytes(page[:n]), idx * PAGE)
                        self.stats["synced_bytes"] += n
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.stats["fsyncs"] += 1
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        return 0

    def power_cut(self) -> None:
        with self._mu:
            self.stats["cuts"] += 1
            self.stats["dropped_bytes"] += sum(len(p) for f in self.files.values()
                                               for p in f.pages.values())
            self.files.clear()


def main() -> None:
    backing, mountpoint = sys.argv[1], sys.argv[2]
    mfusepy.FUSE(LazyFS(backing), mountpoint, foreground=True, nothreads=True,
                 attr_timeout=0, entry_timeout=0, negative_timeout=0, allow_other=True)


if __name__ == "__main__":
    main()

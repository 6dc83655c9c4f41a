"""File operations that stay beneath one directory and never follow a symlink.

Deploying an image writes, as root, into trees whose symlinks the image chose. A path-based
call (``open("root/etc/x/f")``, ``Path.chmod``) follows every symlink on the way, so an image
with ``etc/x -> /`` could make it write, chmod or delete on the host. Everything here resolves
a path from a directory file descriptor one step at a time: with ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS)`` where the kernel has it (Linux 5.6), else component by component with
``O_NOFOLLOW | O_DIRECTORY``. A symlink anywhere on the way raises :class:`SymlinkInPath`
naming it; the caller refuses the image with that name.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import stat
from collections.abc import Iterator

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: openat2(2) is syscall 437 on every architecture that has it (the unified numbering).
_SYS_OPENAT2 = 437
_RESOLVE_NO_XDEV, _RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 1, 2, 4, 8


class SymlinkInPath(Exception):
    """A path would pass through a symlink; ``link`` is the symlink's path in the tree."""

    def __init__(self, link: str) -> None:
        super().__init__(link)
        self.link = link


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class _Openat2:
    """openat2 through ctypes, or None once the kernel (or the libc) says it has none."""

    def __init__(self) -> None:
        self._syscall: ctypes._CFuncPtr | None = None  # type: ignore[name-defined]
        if platform.machine() in ("x86_64", "aarch64"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                self._syscall = libc.syscall
            except (OSError, AttributeError):
                self._syscall = None

    def __call__(self, dirfd: int, path: str) -> int | None:
        """A directory fd for ``path`` beneath ``dirfd``; None means "walk instead"."""
        if self._syscall is None:
            return None
        how = _OpenHow(_DIR_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS |
                       _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV)
        fd = self._syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd),
                           ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                           ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM):  # no openat2, or a seccomp filter denies it
            self._syscall = None
        return None  # ELOOP, ENOENT, ENOTDIR, EXDEV...: the walk says which component


_openat2 = _Openat2()


def split(path: str) -> list[str]:
    """``/a/b/c`` -> ``["a", "b", "c"]``; callers pass normalised paths (no ``..``)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{path}: '..' is not allowed here")
    return parts


def lstat_at(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_dir_at(dirfd: int, name: str, shown: str) -> int:
    """The real directory ``name`` in ``dirfd``; a symlink raises SymlinkInPath(shown)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dirfd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            st = lstat_at(dirfd, name)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise SymlinkInPath(shown) from None
        raise


def remove_at(dirfd: int, name: str) -> None:
    """Remove whatever ``name`` is (a directory with its contents), following nothing."""
    st = lstat_at(dirfd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)


def clear_dir(dirfd: int) -> None:
    """Remove every entry of the directory open as ``dirfd``."""
    for name in os.listdir(dirfd):
        remove_at(dirfd, name)


def copy_dir_metadata(src: int, dst: int) -> None:
    """Owner, mode and extended attributes of directory ``src`` onto directory ``dst``."""
    st = os.fstat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    wanted = set(os.listxattr(src))
    for name in os.listxattr(dst):
        if name not in wanted:
            os.removexattr(dst, name)
    for name in wanted:
        os.setxattr(dst, name, os.getxattr(src, name))


class Root:
    """A directory that every operation stays beneath, held open as a file descriptor."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def open_dir(self, path: str, *, create: bool = False, mode: int = 0o755) -> int:
        """A new fd of the real directory ``path`` (``/`` is the root itself).

        Raises SymlinkInPath for a symlink at any component (the last one included),
        NotADirectoryError for another non-directory, FileNotFoundError for a missing one
        unless ``create`` makes the missing directories (root-owned, ``mode``).
        """
        parts = split(path)
        if not parts:
            return os.dup(self.fd)
        if not create:
            fd = _openat2(self.fd, "/".join(parts))
            if fd is not None:
                return fd
        return self._walk(parts, create, mode)

    def _walk(self, parts: list[str], create: bool, mode: int) -> int:
        fd = os.dup(self.fd)
        try:
            for i, name in enumerate(parts):
                shown = "/" + "/".join(parts[: i + 1])
                try:
                    nxt = open_dir_at(fd, name, shown)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(name, mode, dir_fd=fd)
                    nxt = open_dir_at(fd, name, shown)
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def parent(self, path: str, *, create: bool = False) -> tuple[int, str]:
        """An fd of ``path``'s parent directory (resolved as :meth:`open_dir`) and the name."""
        parts = split(path)
        if not parts:
            raise ValueError("the root has no parent")
        return self.open_dir("/".join(parts[:-1]), create=create), parts[-1]

    def lstat(self, path: str) -> os.stat_result | None:
        """What is at ``path`` itself (a symlink is not followed); None if nothing is, or if
        a parent is missing or not a directory. A symlinked parent raises SymlinkInPath."""
        parts = split(path)
        if not parts:
            return os.fstat(self.fd)
        try:
            fd, name = self.parent(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return lstat_at(fd, name)
        finally:
            os.close(fd)

    def remove(self, path: str) -> None:
        fd, name = self.parent(path)
        try:
            remove_at(fd, name)
        finally:
            os.close(fd)

    def read_file(self, path: str, limit: int) -> bytes | None:
        """The content of the regular file at ``path`` (at most ``limit`` bytes); None if it
        is missing or not a regular file (a symlink is not followed)."""
        try:
            fd, name = self.parent(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            try:
                f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                            dir_fd=fd)
            except OSError:
                return None
            try:
                if not stat.S_ISREG(os.fstat(f).st_mode):
                    return None
                return os.read(f, limit)
            finally:
                os.close(f)
        finally:
            os.close(fd)

    def link(self, target: str, path: str) -> None:
        """Hard-link the entry at ``target`` (a symlink itself, not what it points to) as
        ``path``, replacing what is there."""
        sfd, sname = self.parent(target)
        try:
            dfd, dname = self.parent(path)
            try:
                remove_at(dfd, dname)
                os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)


def walk(dirfd: int) -> Iterator[tuple[str, os.stat_result]]:
    """The names and lstat results in the directory open as ``dirfd``."""
    for name in os.listdir(dirfd):
        st = lstat_at(dirfd, name)
        if st is not None:
            yield name, st

"""Tar entry headers (POSIX.1-2001 pax over ustar), written byte by byte.

:class:`envship.layer.LayerWriter` emits these instead of going through :mod:`tarfile`,
whose headers depend on the Python version and on the running user and clock. Here the
bytes depend only on the arguments: no user or group names, PAX records only where ustar
cannot hold a field (long or non-ASCII names and link targets, sizes of 8 GiB or more)
and never a per-run one (no atime/ctime, no pid in the PAX header's name).
"""

from __future__ import annotations

__all__ = ["BLOCK", "DIR", "HARDLINK", "MAX_OCTAL_12", "REG", "SYMLINK", "entry_headers"]

BLOCK = 512
MAX_OCTAL_12 = 8**11  # the largest value an 11-digit octal field holds, plus one
REG, HARDLINK, SYMLINK, DIR, _PAX = b"0", b"1", b"2", b"5", b"x"


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: str, value: str) -> bytes:
    # "%d %s=%s\n" where the leading length counts the whole record, itself included.
    body = f" {key}={value}\n".encode("utf-8", "surrogateescape")  # undecodable names stay raw
    length = len(body)
    while True:
        total = len(body) + len(str(length))
        if total == length:
            return str(length).encode() + body
        length = total


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) fitting ustar's 155 + 100 bytes, or None if PAX is needed."""
    if len(name) <= 100:
        return b"", name
    # The last '/' that leaves at most 100 bytes of name; a directory's own trailing '/'
    # stays with its name.
    cut = name.rfind(b"/", 0, min(156, len(name) - 1))
    if cut <= 0 or not 0 < len(name) - cut - 1 <= 100:
        return None
    return name[:cut], name[cut + 1 :]


def _header(
    name: bytes,
    typeflag: bytes,
    *,
    mode: int,
    size: int = 0,
    mtime: int = 0,
    linkname: bytes = b"",
    uid: int = 0,
    gid: int = 0,
    prefix: bytes = b"",
) -> bytes:
    parts = [
        name.ljust(100, b"\0"),
        _octal(mode & 0o7777, 8),
        _octal(uid, 8),
        _octal(gid, 8),
        _octal(size, 12),
        _octal(mtime, 12),
        b"        ",  # checksum placeholder: eight spaces while summing
        typeflag,
        linkname.ljust(100, b"\0"),
        b"ustar\x0000",
        bytes(64),  # uname, gname: left empty on purpose
        _octal(0, 8),
        _octal(0, 8),
        prefix.ljust(155, b"\0"),
        bytes(12),
    ]
    block = b"".join(parts)
    checksum = b"%06o\0" % sum(block)
    return block[:148] + checksum + block[155:]


def entry_headers(
    name: str,
    typeflag: bytes,
    *,
    mode: int,
    size: int = 0,
    mtime: int = 0,
    linkname: str = "",
    uid: int = 0,
    gid: int = 0,
) -> bytes:
    """The header block(s) of one entry: a PAX header first when ustar cannot hold it.

    ``name`` is the archive name (a directory's ends with ``/``); names that are not
    UTF-8 travel as surrogate escapes and are written back as their raw bytes.
    """
    name_b = name.encode("utf-8", "surrogateescape")
    link_b = linkname.encode("utf-8", "surrogateescape")
    pax: list[bytes] = []
    split = _split_ustar(name_b) if name_b.isascii() else None
    if split is None:
        pax.append(_pax_record("path", name))
        split = (b"", name_b[:100])
    if len(link_b) > 100 or not link_b.isascii():
        pax.append(_pax_record("linkpath", linkname))
        link_b = link_b[:100]
    if size >= MAX_OCTAL_12:
        pax.append(_pax_record("size", str(size)))
    out = b""
    if pax:
        records = b"".join(pax)
        out = _header(b"././@PaxHeader", _PAX, mode=0o644, size=len(records))
        out += records + bytes(-len(records) % BLOCK)
    prefix, short = split
    return out + _header(
        short,
        typeflag,
        mode=mode,
        size=size if size < MAX_OCTAL_12 else 0,
        mtime=mtime,
        linkname=link_b,
        uid=uid,
        gid=gid,
        prefix=prefix,
    )

"""The tar format both sides keep: block sizes, the header fields, magics, type flags, limits.

One owner for the layout :mod:`bundler.tarwriter` encodes and :mod:`bundler.tarreader` parses
(POSIX ustar and the old GNU header GNU tar's ``--format=gnu`` writes).  Each field is a slice of
the 512-byte header block; :func:`width` is its length in bytes.

Pure: constants only.  Spec: bundle-format.md §1.2 and §5.
"""

from __future__ import annotations

BLOCK = 512
RECORD = 10240  # GNU default blocking factor 20

# off_t is signed 64-bit in GNU tar; anything larger cannot be a real file size or offset.
MAX_OFFSET = (1 << 63) - 1

# Header block fields (POSIX ustar / old GNU layout).
NAME = slice(0, 100)
MODE = slice(100, 108)
UID = slice(108, 116)
GID = slice(116, 124)
SIZE = slice(124, 136)
MTIME = slice(136, 148)
CHKSUM = slice(148, 156)
TYPEFLAG = slice(156, 157)
LINKNAME = slice(157, 257)
MAGIC = slice(257, 265)  # magic + version
UNAME = slice(265, 297)
GNAME = slice(297, 329)
PREFIX = slice(345, 500)  # ustar only: old GNU keeps its sparse fields here
# Old GNU sparse fields: four (offset, numbytes) entries, the "extended" flag, the real size.
SPARSE = 386  # first entry
ISEXTENDED = 482
REALSIZE = slice(483, 495)
# An extension block: 21 entries from byte 0, then its own "extended" flag.
EXT_ISEXTENDED = 504

SPARSE_NUMBER = 12  # width of an entry's offset field and of its numbytes field
SPARSE_ENTRY = 2 * SPARSE_NUMBER
SPARSES_IN_HEADER = 4
SPARSES_IN_EXTENSION = 21

GNU_MAGIC = b"ustar  \x00"  # magic + version as GNU tar's --format=gnu writes them
USTAR_MAGIC = b"ustar\x0000"
LONGLINK_NAME = b"././@LongLink"  # the name GNU gives its long-name and long-link members

# Type flags.
REGTYPE = b"0"
AREGTYPE = b"\x00"  # pre-POSIX regular file
CONTTYPE = b"7"  # contiguous file: a regular file to every reader
DIRTYPE = b"5"
GNUTYPE_SPARSE = b"S"
GNUTYPE_LONGNAME = b"L"
GNUTYPE_LONGLINK = b"K"
XHDTYPE = b"x"  # PAX extended header for the next member
XGLTYPE = b"g"  # PAX global header
SOLARIS_XHDTYPE = b"X"

REGULAR_TYPES = frozenset({REGTYPE, AREGTYPE, CONTTYPE, GNUTYPE_SPARSE})
# Members that only carry metadata for the member after them.
META_TYPES = frozenset({GNUTYPE_LONGNAME, GNUTYPE_LONGLINK, XHDTYPE, XGLTYPE, SOLARIS_XHDTYPE})


def width(field: slice) -> int:
    """Length in bytes of a header field."""
    return int(field.stop - field.start)


def header_checksum(block: bytes | bytearray) -> int:
    """The ustar header checksum: the sum of the block's bytes, the checksum field itself
    counted as spaces (what the writer stores and the reader checks)."""
    return sum(block[: CHKSUM.start]) + width(CHKSUM) * 0x20 + sum(block[CHKSUM.stop :])

"""Content fingerprints of data files and folders: whether the data are still the ones a cache or a result was
made from, whatever their modification times say (a file edited in place, or restored from a copy, keeps or
changes its time independently of its content).

A file's fingerprint is its size and a hash of its bytes: all of them up to :data:`FULL_HASH_BYTES`, else
:data:`SAMPLED_BLOCKS` blocks of :data:`BLOCK_BYTES` (the first, the last and evenly spaced ones between), so a
large table costs about 1 MiB of reading. A folder's fingerprint is the sorted list of its files (relative
paths, hidden files left out) with each file's fingerprint; its files are hashed whole up to the size of the
sample only, so a folder of thousands of FCS files stays quick. An edit of a large file that changes neither its
size nor a sampled block goes unnoticed: the table index (:mod:`deepsets.data.sources.table`) and the folds of
``deepsets cv`` (:mod:`deepsets.train.cv`) are keyed by these fingerprints.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["BLOCK_BYTES", "FULL_HASH_BYTES", "SAMPLED_BLOCKS", "file_fingerprint", "fingerprint"]

BLOCK_BYTES = 1 << 16  # 64 KiB
SAMPLED_BLOCKS = 16
FULL_HASH_BYTES = 1 << 26  # 64 MiB: a smaller file is hashed whole
FOLDER_FULL_HASH_BYTES = BLOCK_BYTES * SAMPLED_BLOCKS  # a file of a folder: hashed whole up to 1 MiB


def file_fingerprint(path, full_below: int = FULL_HASH_BYTES) -> str:
    """``"SIZE-HASH"`` of one file: its bytes hashed whole when ``size <= full_below``, else sampled blocks."""
    size = os.stat(path).st_size
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        if size <= full_below:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            last = size - BLOCK_BYTES
            for k in range(SAMPLED_BLOCKS):
                fh.seek(last * k // (SAMPLED_BLOCKS - 1))
                h.update(fh.read(BLOCK_BYTES))
    return f"{size}-{h.hexdigest()}"


def fingerprint(path) -> str:
    """The fingerprint of a data file, or of a folder: its sorted files' relative paths and fingerprints."""
    p = Path(path)
    if not p.is_dir():
        return file_fingerprint(p)
    h = hashlib.blake2b(digest_size=16)
    files = sorted(f for f in p.rglob("*") if f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    for f in files:
        h.update(f"{f.relative_to(p).as_posix()}\0{file_fingerprint(f, FOLDER_FULL_HASH_BYTES)}\n".encode())
    return f"{len(files)} files-{h.hexdigest()}"

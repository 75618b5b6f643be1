"""Avro schemas of every Lattice event, and the codec that reads and writes them.

The `.avsc` files in `avro/` are the contract between processes: one named record per
file, named `<namespace>.<Name>.avsc` so that records referencing each other by full name
resolve. `history/` freezes every version ever shipped; see `schemas.evolution`.
"""

from schemas.codec import (
    Codec,
    CodecError,
    Decoded,
    DecodeError,
    SchemaInfo,
    default_codec,
    jsonable,
)

__all__ = [
    "Codec",
    "CodecError",
    "DecodeError",
    "Decoded",
    "SchemaInfo",
    "default_codec",
    "jsonable",
]

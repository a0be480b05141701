"""The fleet's key order: (bucket, device, sensor), where a device's bucket is a stable hash of its id.

Landed readings are stored in device-hash buckets and model shards are contiguous ranges of keys in
this order, so a shard's readings lie in one bucket (or a few neighbouring ones for small fleets)
and a task reads only those: data and models are co-partitioned by construction, with no index.

The hash is CRC-32 of the UTF-8 id, spread by a multiplicative mix and reduced to ``BUCKETS``
buckets: stable across processes, machines and Python versions (unlike ``hash``), and computed once
per distinct device of a batch. Changing ``BUCKETS`` changes where readings live: stored readings
would have to be landed again.
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Number of device-hash buckets readings are spread over (each hour holds at most this many folders).
BUCKETS = 64
_MIX = 0x9E3779B1  # 2**32 / golden ratio: spreads CRC-32's low-entropy differences over all bits

Key = tuple[str, str]  # (device, sensor); its bucket follows from the device
#: One end of a key range [lo, hi); None = open (before the first key, after the last).
KeyBound = Key | None


def _bucket_from_crc(crc: np.ndarray) -> np.ndarray:
    mixed = (crc.astype(np.uint64) * np.uint64(_MIX)) & np.uint64(0xFFFFFFFF)
    return ((mixed * np.uint64(BUCKETS)) >> np.uint64(32)).astype(np.int32)


def device_bucket(device: str) -> int:
    """The bucket of one device id."""
    return int(_bucket_from_crc(np.array([zlib.crc32(device.encode())], dtype=np.uint64))[0])


def bucket_of(devices: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The bucket of every row's device (int32), hashing each distinct device once."""
    chunks = devices.chunks if isinstance(devices, pa.ChunkedArray) else [devices]
    out = [np.zeros(0, dtype=np.int32)]
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        encoded = chunk if pa.types.is_dictionary(chunk.type) else pc.dictionary_encode(chunk)
        crc = np.fromiter((zlib.crc32(d.encode()) for d in encoded.dictionary.to_pylist()), dtype=np.uint64)
        out.append(_bucket_from_crc(crc)[encoded.indices.to_numpy(zero_copy_only=False)])
    return np.concatenate(out)


def key_bucket(key: Key | None, default: int) -> int:
    """The bucket of a range bound; ``default`` for an open bound (None)."""
    return default if key is None else device_bucket(key[0])


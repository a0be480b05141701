"""The durable log: group commit, torn tails, segment rotation, one writer per directory."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fleetscore.errors import StorageError
from fleetscore.ingest.log import FRAME, SegmentLog, list_segments, read_frames, segment_name, writer_active


def test_concurrent_appends_share_fsyncs_and_all_become_durable(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    futures, lock = [], threading.Lock()

    def writer(k: int) -> None:
        for i in range(200):
            f = log.append(f"{k}:{i}".encode())
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in futures:
        f.result(timeout=10)
    assert log.pending == 0
    assert 1 <= log.fsyncs < len(futures)  # group commit: far fewer fsyncs than records
    log.close()
    frames, _ = read_frames(tmp_path / segment_name(1))
    got = sorted(f.payload for f in frames)
    assert got == sorted(f"{k}:{i}".encode() for k in range(8) for i in range(200))


def test_torn_and_corrupt_tails_end_the_valid_data(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    for i in range(3):
        log.append(b"record-%d" % i).result()
    log.close()
    path = tmp_path / segment_name(1)
    whole = path.read_bytes()
    frames, end = read_frames(path)
    assert [f.payload for f in frames] == [b"record-0", b"record-1", b"record-2"] and end == len(whole)
    path.write_bytes(whole[:-3])  # torn last frame
    frames, end = read_frames(path)
    assert len(frames) == 2 and end == frames[-1].end
    corrupt = bytearray(whole)
    corrupt[frames[1].offset + FRAME.size] ^= 0xFF  # flip a payload byte of the second record
    path.write_bytes(bytes(corrupt))
    assert [f.payload for f in read_frames(path)[0]] == [b"record-0"]
    path.write_bytes(whole + b"\x00" * 64)  # preallocated zeros are not a record
    assert len(read_frames(path)[0]) == 3
    assert read_frames(tmp_path / "missing.log", 5) == ([], 5)


def test_rotation_seals_segments_and_a_restart_starts_a_new_one(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=100)
    for _ in range(5):
        log.append(b"x" * 60).result()
    assert writer_active(tmp_path)
    log.close()
    assert not writer_active(tmp_path)
    segments = list_segments(tmp_path)
    assert len(segments) >= 3
    assert sum(len(read_frames(tmp_path / segment_name(s))[0]) for s in segments) == 5
    again = SegmentLog(tmp_path, min_segment=1)
    assert again.segment == segments[-1] + 1  # never appends after a possibly torn tail
    again.close()
    ahead = SegmentLog(tmp_path, min_segment=50)  # the checkpoint is past every file
    assert ahead.segment == 50
    ahead.close()


def test_one_writer_per_directory(tmp_path: Path) -> None:
    first = SegmentLog(tmp_path)
    with pytest.raises(StorageError, match="another process"):
        SegmentLog(tmp_path)
    first.close()
    with pytest.raises(StorageError):
        first.append(b"after close")
    SegmentLog(tmp_path).close()

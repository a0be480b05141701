"""Model shard files that are not what fleetscore wrote fail with a ModelFormatError that names the file
and says what is wrong, and never suggests unpickling them."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fleetscore.errors import ModelFormatError
from fleetscore.storage import layout
from fleetscore.storage.fs import open_storage
from fleetscore.storage.models import ModelStore


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _truncated_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("center.npy", b"\x93NUMPY" + b"\x00" * 200)
    return buf.getvalue()[:60]


@pytest.mark.parametrize(("content", "says"), [
    (b"not a model", "not an .npz archive (11 bytes"),
    (b"", "not an .npz archive (0 bytes"),
    (_npz(format_version=np.array([object()], dtype=object)), "never unpickles model files"),
    (_truncated_zip(), "damaged .npz archive"),
    (_npz(format_version=np.array(99)), "model arrays missing"),
], ids=["text", "empty", "object-array", "truncated-zip", "foreign-arrays"])
def test_unreadable_shard_files_say_why(tmp_path: Path, content: bytes, says: str) -> None:
    storage = open_storage(str(tmp_path))
    storage.write_bytes(layout.shard_key("v1", 0), content)
    with pytest.raises(ModelFormatError) as err:
        ModelStore(storage).read_bundle("v1", 0)
    message = str(err.value)
    assert "shard-00000.npz" in message and says in message
    assert "allow_pickle" not in message and "pickle.load" not in message


def test_missing_shard_file_is_a_model_format_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="is missing"):
        ModelStore(open_storage(str(tmp_path))).read_bundle("v1", 3)

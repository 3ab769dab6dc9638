"""The disk cache of framed real-world images: the same inputs as framing afresh, keyed by the set and the code."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.data import framed
from digitlab.data.preprocess import preprocess
from digitlab.data.realworld import load_realworld


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITLAB_CACHE", str(tmp_path))
    return tmp_path


def test_cached_inputs_are_what_preprocess_makes_and_are_read_back_without_framing(cache, monkeypatch):
    index = np.array([3, 0, 7, 3])
    images, ok = framed.framed_inputs("page-tune", index)
    ds = load_realworld("page-tune")
    for i, im, good in zip(index, images, ok, strict=True):
        prep = preprocess(ds.images[int(i)])
        assert good == (prep.status == "ok")
        assert np.array_equal(im, prep.image if good else np.zeros((28, 28), np.uint8))
    assert len(list((cache / "framed").glob("page-tune-*.npz"))) == 1

    def no_framing(*args, **kwargs):
        raise AssertionError("framed again although cached")

    monkeypatch.setattr("digitlab.data.preprocess.preprocess", no_framing)
    again, ok_again = framed.framed_inputs("page-tune", index[:2])
    assert np.array_equal(again, images[:2]) and np.array_equal(ok_again, ok[:2])


def test_a_change_to_the_code_frames_afresh_into_a_new_file(cache, monkeypatch):
    framed.framed_inputs("page-tune", np.array([1]))
    monkeypatch.setattr(framed, "_code_digest", lambda: b"other code")
    framed.framed_inputs("page-tune", np.array([1]))
    assert len(list((cache / "framed").glob("page-tune-*.npz"))) == 2


def test_an_unreadable_cache_file_is_framed_again_and_an_unwritable_folder_is_no_error(cache, monkeypatch):
    first, _ = framed.framed_inputs("page-tune", np.array([2]))
    (path,) = (cache / "framed").glob("page-tune-*.npz")
    path.write_bytes(b"not an npz")
    assert np.array_equal(framed.framed_inputs("page-tune", np.array([2]))[0], first)
    blocked = cache / "file"
    blocked.write_text("a file where the folder should be")
    monkeypatch.setenv("DIGITLAB_CACHE", str(blocked))
    assert np.array_equal(framed.framed_inputs("page-tune", np.array([2]))[0], first)

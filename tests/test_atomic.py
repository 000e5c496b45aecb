"""saematch_nb._atomic: a file is written whole or not at all, and no temp file is left behind."""

from __future__ import annotations

import json
import threading

import pytest

from saematch_nb._atomic import atomic_write, atomic_write_json, temp_name


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_writes_bytes_str_and_function(tmp_path):
    assert atomic_write(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "b.txt", "héllo")
    assert (tmp_path / "b.txt").read_bytes() == "héllo".encode("utf-8")
    atomic_write(tmp_path / "c.bin", lambda fh: fh.write(b"xyz"))
    assert (tmp_path / "c.bin").read_bytes() == b"xyz"
    atomic_write(tmp_path / "d.txt", lambda fh: fh.write("ünï"), text=True)
    assert (tmp_path / "d.txt").read_text("utf-8") == "ünï"
    assert _leftovers(tmp_path) == []


def test_creates_parent_folders_and_replaces(tmp_path):
    p = tmp_path / "x" / "y" / "f.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": 2}, indent=1)
    assert json.loads(p.read_text()) == {"a": 2}
    assert _leftovers(p.parent) == []


def test_old_file_intact_when_the_writer_raises(tmp_path):
    p = tmp_path / "keep.txt"
    p.write_text("old")

    def half(fh):
        fh.write(b"new, half of it")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, half)
    assert p.read_text() == "old"
    assert _leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C mid-write: the same
        atomic_write(p, lambda fh: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert p.read_text() == "old" and _leftovers(tmp_path) == []


def test_unserialisable_json_leaves_nothing(tmp_path):
    p = tmp_path / "j.json"
    with pytest.raises(TypeError):
        atomic_write_json(p, {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_a_folder_in_the_way_is_an_oserror_and_no_temp(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError):
        atomic_write(tmp_path / "dir", b"data")
    assert (tmp_path / "dir").is_dir() and _leftovers(tmp_path) == []


def test_content_and_mode_must_agree(tmp_path):
    with pytest.raises(TypeError, match="text=True"):
        atomic_write(tmp_path / "f", "text", text=False)
    with pytest.raises(TypeError, match="bytes"):
        atomic_write(tmp_path / "f", b"bytes", text=True)
    assert list(tmp_path.iterdir()) == []


def test_temp_names_are_unique_within_one_process(tmp_path):
    p = tmp_path / "f.npz"
    names = {temp_name(p).name for _ in range(200)}
    assert len(names) == 200
    assert all(n.startswith(".f.npz.") and n.endswith(".tmp") for n in names)


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    p = tmp_path / "shared.bin"
    size = 256 * 1024  # several writes' worth, so that interleaving would show
    payloads = [bytes([i]) * size for i in range(8)]
    errors = []
    start = threading.Barrier(len(payloads))

    def writer(data):
        try:
            start.wait()
            for _ in range(5):
                atomic_write(p, lambda fh: [fh.write(data[k:k + 4096]) for k in range(0, size, 4096)])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(d,)) for d in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = p.read_bytes()
    assert got in payloads  # one writer's content, whole: never a mix or a truncation
    assert _leftovers(tmp_path) == []

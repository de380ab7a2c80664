"""--save-tensors plumbing: the worker's spool, the agent's forwarding and the host's store, without a network."""

from __future__ import annotations

import io
import json
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from qbench.agent import tensor_spool
from qbench.host.tensor_store import TensorStore, safe_names
from qbench.host.transport.client import AgentError
from qbench.protocols.messages import TENSOR, CapturePair, Message, QParams


def test_safe_names_cannot_leave_the_folder_and_never_clash():
    names = ["../../etc/passwd", "a/b", "a_b", "A_B", ".hidden", "", "..", "conv:0", "x" * 500]
    stems = safe_names(names)
    assert len({s.lower() for s in stems}) == len(names)
    for stem in stems:
        assert stem and not stem.startswith(".") and "/" not in stem and "\\" not in stem and len(stem) < 130
        assert Path("/out", stem + ".float.npy").resolve().parent == Path("/out")


def _message(pair, side, sample, shape, piece, offset=0):
    return Message(type=TENSOR, id="r", content={"pair": pair, "side": side, "sample": sample, "shape": shape,
                                                  "dtype": piece.dtype.name, "offset": offset}, tensors=[piece])


def test_store_reassembles_chunks_in_any_order_and_lists_them(tmp_path):
    pairs = [CapturePair("conv/out:0", "conv_q", QParams([0.1], [0])), CapturePair("y", "y", exact=True)]
    store = TensorStore(tmp_path, pairs, samples=2)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 5)).astype(np.float32)
    for sample in (1, 0):
        flat = a[sample].reshape(-1)
        for offset in (10, 0, 5):  # chunks of 5, out of order
            store.write(_message(0, "float", sample, [3, 5], flat[offset: offset + 5], offset))
    store.write(_message(1, "float", 0, [], np.array([7], np.int64)))
    store.close()
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["samples"] == 2
    first, second = index["tensors"]
    np.testing.assert_array_equal(np.load(tmp_path / first["float"]), a)
    assert first["name"] == "conv/out:0" and first["int8"] is None and not first["complete"]
    assert first["dequantized"] and first["qparams"]["scale"] == [0.1]
    assert second["float_dtype"] == "int64" and np.load(tmp_path / second["float"])[0] == 7


@pytest.mark.parametrize("change", [
    {"pair": 5}, {"side": "../x"}, {"sample": 2}, {"offset": -1}, {"offset": 14}, {"dtype": "float64"},
    {"shape": [3, 5, 1]},
])
def test_store_rejects_chunks_that_do_not_fit(tmp_path, change):
    store = TensorStore(tmp_path, [CapturePair("t", "t")], samples=2)
    store.write(_message(0, "float", 0, [3, 5], np.zeros(5, np.float32)))
    msg = _message(0, "float", 0, [3, 5], np.zeros(5, np.float32))
    msg.content.update(change)
    with pytest.raises(AgentError) as err:
        store.write(msg)
    assert err.value.info.code == "bad_message"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.float.npy"]


def test_spool_keeps_a_bounded_backlog_and_forward_sends_every_chunk(tmp_path):
    """The worker blocks while the agent has not taken its files; what the agent sends rebuilds the tensors."""
    pairs = [CapturePair(f"t{i}", f"t{i}_q", QParams([0.5], [3], dtype="int8")) for i in range(6)]
    rng = np.random.default_rng(1)
    tensors = [(rng.normal(size=(50, 100)).astype(np.float32), rng.integers(-128, 128, (50, 100)).astype(np.int8))
               for _ in pairs]
    limit = 3 * 50 * 100 * 4  # three float tensors
    spool = tensor_spool.Spool(tmp_path, pairs, max_pending=limit)
    sent: list[Message] = []
    backlog = []
    done = threading.Event()

    def agent():  # takes the oldest file every few ms, as the agent's pump would
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (done.is_set() and not list(spool.dir.glob("*.npy"))):
            files = sorted(spool.dir.glob("*.npy"))
            backlog.append(sum(p.stat().st_size for p in files))
            if files:
                meta = json.loads((tmp_path / "meta" / files[0].name).read_text())
                tensor_spool.forward(tmp_path, {"file": files[0].name, **meta}, sent.append, "r", chunk_bytes=7000)
            time.sleep(0.003)

    (tmp_path / "meta").mkdir()
    original_put = spool._put

    def put(pair, side, sample, array, kernel):  # records what the announcement line would say
        (tmp_path / "meta" / f"{spool._seq:08d}.npy").write_text(json.dumps({"pair": pair, "side": side,
                                                                           "sample": sample}))
        original_put(pair, side, sample, array, kernel)

    spool._put = put
    consumer = threading.Thread(target=agent)
    consumer.start()
    with redirect_stdout(io.StringIO()) as out:
        spool.put_sample(list(range(len(pairs))), 0, tensors)
    done.set()
    consumer.join(timeout=30)
    assert len(out.getvalue().splitlines()) == 2 * len(pairs)
    assert max(backlog) <= limit + 200  # + one .npy header
    rebuilt: dict[tuple[int, str], np.ndarray] = {}
    for msg in sent:
        c = msg.content
        buf = rebuilt.setdefault((c["pair"], c["side"]), np.zeros(int(np.prod(c["shape"])), c["dtype"]))
        buf[c["offset"]: c["offset"] + msg.tensors[0].size] = msg.tensors[0]
    for i, (f, q) in enumerate(tensors):
        np.testing.assert_array_equal(rebuilt[(i, "float")].reshape(f.shape), f)
        np.testing.assert_array_equal(rebuilt[(i, "int8")].reshape(q.shape),
                                      (q.astype(np.float32) - np.float32(3)) * np.float32(0.5))
    assert all(m.tensors[0].nbytes <= 7000 for m in sent)
    assert not list(spool.dir.glob("*.npy"))  # forwarded files are deleted


def test_forward_refuses_files_outside_its_pattern(tmp_path):
    (tmp_path / "tensors").mkdir()
    with pytest.raises(Exception, match="bad tensor file"):
        tensor_spool.forward(tmp_path, {"file": "../job.json", "pair": 0, "side": "float", "sample": 0},
                             lambda m: None, "r", 1024)

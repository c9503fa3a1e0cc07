"""golden_model.checkpoint: torch-free .pt reading, safetensors I/O, refusal of code-carrying pickles."""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from golden_model.checkpoint import (CheckpointError, Tensor, convert, float32_to_bf16_bits, load_raw,
                                     load_safetensors, load_state_dict, save_safetensors)
from golden_model.config import load_config
from golden_model.image_encoder import build_image_encoder
from golden_model.weights import WeightError, Weights
from sw.cli import main as cli

torch = pytest.importorskip("torch")


def _as_numpy(t):
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


@pytest.fixture(scope="module")
def official_pt(tmp_path_factory):
    from tests.golden.oracle import official_checkpoint
    return official_checkpoint("tiny", 0, str(tmp_path_factory.mktemp("ckpt")))


@pytest.mark.oracle
def test_official_checkpoint_round_trip(official_pt, tmp_path):
    ref = torch.load(official_pt, map_location="cpu", weights_only=True)["model"]
    ours = load_state_dict(official_pt)
    assert list(ours) == list(ref)
    for k, t in ref.items():
        assert ours[k].dtype == t.numpy().dtype and np.array_equal(ours[k], t.numpy()), k
    st = tmp_path / "tiny.safetensors"
    assert cli(["convert", str(official_pt), str(st)]) == 0
    back = load_state_dict(st)
    assert set(back) == set(ref)
    for k, t in ref.items():
        assert np.array_equal(back[k], t.numpy()), k


@pytest.mark.oracle
def test_official_checkpoint_loads_strictly_for_the_image_encoder(official_pt):
    sd = {k: v for k, v in load_state_dict(official_pt).items() if k.startswith("image_encoder.")}
    w = Weights(sd)
    build_image_encoder(w.take_prefix("image_encoder"), load_config("tiny"))
    w.check_complete()
    assert len(w.taken) == len(sd) > 100

    broken = dict(sd)
    del broken["image_encoder.trunk.blocks.3.attn.qkv.weight"]
    broken["image_encoder.trunk.extra"] = np.zeros(3, np.float32)
    broken["image_encoder.neck.convs.0.conv.bias"] = np.zeros(255, np.float32)
    w = Weights(broken)
    build_image_encoder(w.take_prefix("image_encoder"), load_config("tiny"))
    with pytest.raises(WeightError) as e:
        w.check_complete()
    msg = str(e.value)
    assert "image_encoder.trunk.blocks.3.attn.qkv.weight" in msg
    assert "image_encoder.trunk.extra" in msg
    assert "image_encoder.neck.convs.0.conv.bias: checkpoint (255,), model (256,)" in msg


def test_dtypes_views_and_scalars(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    sd = OrderedDict(
        f32=torch.randn(3, 5), f64=torch.randn(2, 2, dtype=torch.float64),
        f16=torch.randn(7).half(), bf16=torch.tensor([1.0, -2.5, 3.14159, 1e-30, 65504.0]).bfloat16(),
        i64=torch.arange(-3, 9), i32=torch.tensor([2**31 - 1, -2**31], dtype=torch.int32),
        u8=torch.tensor([0, 255], dtype=torch.uint8), b=torch.tensor([True, False]),
        scalar=torch.tensor(2.5), empty=torch.zeros(0, 3),
        transposed=base.t(), view=base[1:, 2:5], shared=base,   # views into one storage
    )
    path = tmp_path / "types.pt"
    torch.save({"model": sd}, path)
    raw = load_raw(path)
    assert raw["bf16"].dtype == "BF16" and raw["bf16"].data.dtype == np.uint16
    ours = load_state_dict(path)
    for k, t in sd.items():
        ref = _as_numpy(t)
        assert ours[k].shape == ref.shape and ours[k].dtype == ref.dtype and np.array_equal(ours[k], ref), k
    st = tmp_path / "types.safetensors"
    convert(path, st)
    raw2 = load_raw(st)
    assert {k: v.dtype for k, v in raw2.items()} == {k: v.dtype for k, v in raw.items()}
    for k in sd:
        assert np.array_equal(raw2[k].data, raw[k].data) and raw2[k].data.shape == raw[k].data.shape, k


def test_safetensors_layout_is_the_published_format(tmp_path):
    path = save_safetensors(tmp_path / "x.safetensors",
                            {"b": np.arange(3, dtype=np.int64), "a": np.ones((2, 2), np.float16),
                             "c": Tensor("BF16", float32_to_bf16_bits(np.array([1.5], np.float32)))},
                            {"note": "hi"})
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(blob[8:8 + n])
    assert header["__metadata__"] == {"note": "hi"}
    assert header["b"] == {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]}
    assert header["a"]["dtype"] == "F16" and header["c"]["dtype"] == "BF16"
    b0, b1 = header["c"]["data_offsets"]
    assert blob[8 + n + b0:8 + n + b1] == bytes([0xC0, 0x3F])   # 1.5 in bfloat16, little-endian
    assert np.array_equal(load_safetensors(path)["c"], [1.5])


def test_bf16_rounding_is_torchs():
    x = torch.randn(10000) * 100
    ours = float32_to_bf16_bits(x.numpy())
    assert np.array_equal(ours, x.bfloat16().view(torch.int16).numpy().view(np.uint16))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_executing_pickle_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2), "x": _Evil(marker)}}, path)
    with pytest.raises(CheckpointError, match=r"global (posix|os|nt)\.system"):
        load_state_dict(path)
    assert not marker.exists()
    assert cli(["convert", str(path), str(tmp_path / "out.safetensors")]) == 1
    assert "system" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    torch.load(path, weights_only=False)    # the payload is live: plain unpickling runs it
    assert marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("torch", "load"), ("numpy", "load"),
                                         ("torch._utils", "_rebuild_device_tensor_from_numpy")])
def test_any_other_global_is_refused_by_name(tmp_path, module, name):
    path = tmp_path / "g.pt"
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"."
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    with pytest.raises(CheckpointError, match=f"global {module}.{name}"):
        load_state_dict(path)


def test_bare_pickle_is_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(CheckpointError, match="legacy"):
        load_state_dict(path)
    assert not marker.exists()


def test_truncated_and_garbage_files(tmp_path):
    sd = {"model": {"a": torch.randn(64, 64), "b": torch.arange(10)}}
    good = tmp_path / "good.pt"
    torch.save(sd, good)
    blob = good.read_bytes()
    cases = {"empty": b"", "garbage": os.urandom(4096), "half": blob[:len(blob) // 2], "head": blob[:200],
             "text": b"not a checkpoint at all\n"}
    for name, data in cases.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(data)
        with pytest.raises(CheckpointError):
            load_state_dict(p)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_state_dict(tmp_path / "missing.pt")

    st = tmp_path / "good.safetensors"
    convert(good, st)
    sblob = st.read_bytes()
    for name, data in {"cut": sblob[:-10], "header_only": sblob[:20],
                       "huge_header": struct.pack("<Q", 1 << 40) + sblob[8:]}.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        with pytest.raises(CheckpointError):
            load_state_dict(p)


def test_storage_too_small_for_the_tensor_is_an_error(tmp_path):
    path = tmp_path / "lie.pt"
    torch.save({"model": {"a": torch.randn(100)}}, path)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    key = next(n for n in members if n.endswith("/data/0"))
    members[key] = members[key][:40]
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    with pytest.raises(CheckpointError, match="bytes"):
        load_state_dict(path)


def test_convert_cli_usage(tmp_path, capsys):
    src = tmp_path / "a.pt"
    torch.save({"model": {"a": torch.ones(2)}}, src)
    with pytest.raises(SystemExit) as e:
        cli(["convert", str(src), str(tmp_path / "a.bin")])
    assert e.value.code == 2
    dst = tmp_path / "a.safetensors"
    assert cli(["convert", str(src), str(dst)]) == 0
    assert cli(["convert", str(src), str(dst)]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli(["convert", str(src), str(dst), "--force"]) == 0


def test_compressed_zip_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}.")
        zf.writestr("archive/data/0", bytes(50_000_000))
    with pytest.raises(CheckpointError, match="claims 50000000 bytes"):
        load_state_dict(path)


def _pt_with_pickle(path, payload: bytes, storages: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        for key, data in storages.items():
            zf.writestr(f"archive/data/{key}", data)
    return path


def _tensor_pickle(size, stride, offset=0, numel=4):
    """A pickle of {"model": {"t": tensor}} with any geometry, laid out as torch writes it."""
    class Rebuild:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (_Pid(numel), offset, size, stride, False, OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", obj.numel) if isinstance(obj, _Pid) else None
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"model": {"t": Rebuild()}})
    return buf.getvalue()


class _Pid:
    def __init__(self, numel):
        self.numel = numel


def test_hand_made_tensor_pickles(tmp_path):
    data = np.arange(4, dtype=np.float32).tobytes()
    ok = _pt_with_pickle(tmp_path / "ok.pt", _tensor_pickle((2, 2), (1, 2)), {"0": data})
    assert np.array_equal(load_state_dict(ok)["t"], [[0, 2], [1, 3]])
    expanded = _pt_with_pickle(tmp_path / "exp.pt", _tensor_pickle((1000, 1000), (0, 0)), {"0": data})
    with pytest.raises(CheckpointError, match="expanded"):
        load_state_dict(expanded)
    past_end = _pt_with_pickle(tmp_path / "end.pt", _tensor_pickle((2, 2), (2, 1), offset=1), {"0": data})
    with pytest.raises(CheckpointError, match="past its storage"):
        load_state_dict(past_end)

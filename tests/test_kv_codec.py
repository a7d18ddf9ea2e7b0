"""KV payload codecs (hyperrag.cache.kv_codec) and compression in the SegmentStore."""
import numpy as np
import pytest
import torch

from hyperrag.cache.kv_codec import CodecError, Int8Codec, KVShape, RawCodec, make_codec
from hyperrag.cache.segment_store import SegmentStore

SHAPE = KVShape(num_layers=3, kv_heads=2, head_dim=64, dtype="bfloat16")


def payload(tokens: int, seed: int = 0, shape: KVShape = SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(shape.num_layers, 2, shape.kv_heads, tokens, shape.head_dim, generator=g)
    kv[:, 0, :, :, 7] *= 30  # an outlier key channel, as real keys have
    return kv.to(getattr(torch, shape.dtype))


def raw_bytes(kv: torch.Tensor) -> np.ndarray:
    return kv.contiguous().reshape(-1).view(torch.uint8).numpy()


@pytest.mark.parametrize("key_scales", ["channel", "token"])
@pytest.mark.parametrize("value_scales", ["channel", "token"])
def test_int8_error_is_within_half_a_step_of_each_group(key_scales, value_scales):
    codec = Int8Codec(key_scales, value_scales)
    kv = payload(40)
    out = codec.decode_tensor(codec.encode(raw_bytes(kv), SHAPE), SHAPE)
    assert out.dtype == kv.dtype and out.shape == kv.shape
    for index, granularity in ((0, key_scales), (1, value_scales)):
        x = kv[:, index].float()
        reduced = 2 if granularity == "channel" else 3
        step = x.abs().amax(dim=reduced, keepdim=True) / 127
        # half a quantization step, plus bf16's own rounding of the result (2**-8 relative)
        bound = step / 2 + x.abs() * 2 ** -8 + 1e-6
        assert bool(((out[:, index].float() - x).abs() <= bound).all()), (index, granularity)


def test_per_channel_keys_beat_per_token_keys_with_an_outlier_channel():
    kv = payload(64)
    errors = {}
    for key_scales in ("channel", "token"):
        codec = Int8Codec(key_scales, "token")
        out = codec.decode_tensor(codec.encode(raw_bytes(kv), SHAPE), SHAPE)
        errors[key_scales] = float((out[:, 0].float() - kv[:, 0].float()).norm())
    assert errors["channel"] < errors["token"]


@pytest.mark.parametrize("tokens", [32, 64, 250, 1000])
def test_int8_size_is_at_most_055_of_bf16(tokens):
    raw = raw_bytes(payload(tokens))
    stored = make_codec("int8").encode(raw, SHAPE)
    ratio = stored.nbytes / raw.nbytes
    # int8 elements + a float32 scale per key channel (over the tokens) and per value token
    expected = 0.5 + 2 / SHAPE.head_dim * 0.5 + 2 / tokens * 0.5
    assert ratio == pytest.approx(expected, abs=0.001)
    assert ratio <= 0.55


def test_all_zero_groups_and_float32_round_trip():
    shape = KVShape(2, 1, 64, "float32")
    kv = torch.zeros(2, 2, 1, 8, 64)
    kv[1, 1, 0, 3] = torch.linspace(-1, 1, 64)
    codec = make_codec("int8")
    out = codec.decode_tensor(codec.encode(raw_bytes(kv), shape), shape)
    assert out.dtype == torch.float32
    assert torch.equal(out[0], kv[0])  # zero groups stay exactly zero
    assert float((out - kv).abs().max()) <= 1 / 127 / 2 + 1e-7


def test_raw_codec_is_the_identity():
    kv = payload(10)
    raw = raw_bytes(kv)
    codec = RawCodec()
    assert torch.equal(codec.decode_tensor(codec.encode(raw, SHAPE), SHAPE), kv)


def test_damaged_or_foreign_payloads_are_refused():
    codec = make_codec("int8")
    good = codec.encode(raw_bytes(payload(16)), SHAPE)
    with pytest.raises(CodecError, match="header"):
        codec.decode(good[:10], SHAPE)
    with pytest.raises(CodecError, match="its header says"):
        codec.decode(good[:-1], SHAPE)
    with pytest.raises(CodecError, match="magic"):
        codec.decode(raw_bytes(payload(16)), SHAPE)
    with pytest.raises(CodecError, match="does not match"):
        codec.decode(good, KVShape(3, 2, 64, "float16"))
    with pytest.raises(CodecError, match="whole number of tokens"):
        codec.encode(np.zeros(SHAPE.token_bytes() + 1, np.uint8), SHAPE)


@pytest.mark.parametrize("spec", ["int4", "int8-kfoo-vtoken", 8, "Int8"])
def test_unknown_codec_names_the_allowed_values(spec):
    with pytest.raises(ValueError, match="'raw', 'int8'"):
        make_codec(spec)


@pytest.mark.parametrize("field,value", [("num_layers", 0), ("kv_heads", 1.5), ("dtype", "int8")])
def test_kv_shape_is_validated(field, value):
    args = {"num_layers": 2, "kv_heads": 1, "head_dim": 64, "dtype": "bfloat16", field: value}
    with pytest.raises(ValueError, match=f"KVShape.{field}"):
        KVShape(**args)


def test_store_validates_its_codecs():
    with pytest.raises(ValueError, match="unknown layer"):
        SegmentStore({"host": 1 << 20}, codecs={"gpu": "int8"}, kv_shape=SHAPE)
    with pytest.raises(ValueError, match="kv_shape is required"):
        SegmentStore({"host": 1 << 20}, codecs={"disk": "int8"})
    with pytest.raises(ValueError, match="exactly one of capacities"):
        SegmentStore()


def test_store_keeps_int8_in_memory_and_returns_raw_payloads():
    store = SegmentStore({"host": 8 << 20}, codecs={"memory": "int8"}, kv_shape=SHAPE)
    kvs = [payload(50, seed) for seed in range(2)]
    assert store.save("ns", ["a", "b"], [50, 50], {0: raw_bytes(kvs[0]), 1: raw_bytes(kvs[1])}) == 2
    held = store.acquire("r", "ns", ["a", "b"], [50, 50])
    assert len(held) == 2
    for node, kv in zip(held, kvs):
        raw = store.read(node)
        assert raw.dtype == np.uint8 and raw.nbytes == kv.numel() * 2
        back = SHAPE.tensor(raw, 50)
        assert float((back.float() - kv.float()).abs().max()) < float(kv.float().abs().max()) / 100
    store.release("r")
    stats = store.stats()
    assert stats.saved_bytes <= 0.55 * 2 * kvs[0].numel() * 2


def test_disk_layer_compresses_and_a_second_process_reads_it_back(tmp_path):
    writer = SegmentStore({"host": 8 << 20}, tmp_path, codecs={"disk": "int8"}, kv_shape=SHAPE)
    kv = payload(50)
    writer.save("ns", ["a"], [50], {0: raw_bytes(kv)})
    raw_nbytes = kv.numel() * 2
    assert writer.stats().saved_bytes == raw_nbytes            # memory keeps raw
    assert writer.stats().saved_disk_bytes <= 0.55 * raw_nbytes  # the directory holds int8
    reader = SegmentStore({"host": 8 << 20}, tmp_path, codecs={"disk": "int8"}, kv_shape=SHAPE)
    held = reader.acquire("r", "ns", ["a"], [50])
    assert len(held) == 1 and reader.stats().disk_hits == 1
    back = SHAPE.tensor(reader.read(held[0]), 50)
    assert float((back.float() - kv.float()).abs().max()) < float(kv.float().abs().max()) / 100
    # Blobs are filed under their codec: a store reading raw blobs finds none, never int8 bytes as raw KV.
    raw_reader = SegmentStore({"host": 8 << 20}, tmp_path)
    assert raw_reader.cached_prefix("ns", ["a"]) == 0
    assert raw_reader.acquire("r", "ns", ["a"], [50]) == []

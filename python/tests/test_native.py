"""The native API: buffers, lifetimes, the GIL, encode, streaming, KV views,
exceptions; and the SDK drop-in's safety where the SDK has defects."""

import gc
import mmap
import threading
import time

import numpy as np
import pytest

import avp_rs


def _message(n_floats=16, **kw):
    payload = np.arange(n_floats, dtype=np.float32).tobytes()
    return payload, avp_rs.encode(payload, model_id="m", tensor_shape=[n_floats], **kw)


def test_every_buffer_type_decodes_without_copy(tmp_path):
    """AVP-PY-3: bytes, bytearray, memoryview, mmap and numpy all decode, and
    the payload is a view of the input, not a copy."""
    payload, msg = _message()
    ba = bytearray(msg)
    path = tmp_path / "m.avp"
    path.write_bytes(msg)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        inputs = [msg, ba, memoryview(msg), memoryview(ba)[0:], mm, np.frombuffer(msg, dtype=np.uint8)]
        for buf in inputs:
            m = avp_rs.decode(buf)
            assert isinstance(m.payload, memoryview)
            assert bytes(m.payload) == payload
            del m
        gc.collect()
        mm.close()
    m = avp_rs.decode(ba)
    ba[len(ba) - 1] ^= 0  # writing in place is fine
    arr = np.frombuffer(m.payload, dtype=np.float32)
    ba[len(msg) - 4:] = np.float32(99).tobytes()
    assert arr[-1] == 99.0  # same memory: no copy was made


def test_payload_outlives_the_input():
    """AVP-PY-3: the payload keeps the input alive after every other reference is gone."""
    payload, msg = _message(1024)
    buf = bytearray(msg)
    m = avp_rs.decode(buf)
    view = m.payload
    del buf, m
    gc.collect()
    assert bytes(view) == payload
    # And the input cannot be resized under a live view.
    buf2 = bytearray(msg)
    m2 = avp_rs.decode(buf2)
    with pytest.raises(BufferError):
        buf2.extend(b"x")
    del m2


def test_metadata_strings_are_those_decoded_even_if_the_buffer_changes():
    """AVP-PY-3: a Message's metadata strings are read from immutable bytes
    when asked for, and copied from any other buffer, whose owner may write
    it later: they stay the decoded ones either way."""
    _, msg = _message(session_id="sess-1", source_agent_id="agent-a", target_agent_id="b",
                      avp_map_id="map", compression=None)
    ba = bytearray(msg)
    messages = [avp_rs.decode(msg), avp_rs.decode(ba), avp_rs.peek(msg), avp_rs.peek(ba)]
    at = bytes(ba).index(b"agent-a")
    ba[at:at + 7] = b"AGENT-Z"
    for m in messages:
        assert (m.session_id, m.source_agent_id, m.target_agent_id, m.model_id, m.avp_map_id,
                m.compression) == ("sess-1", "agent-a", "b", "m", "map", None)
        assert "model_id='m'" in repr(m) or 'model_id="m"' in repr(m)


def test_non_contiguous_buffer_is_refused_not_misread():
    _, msg = _message()
    strided = memoryview(np.frombuffer(msg * 2, dtype=np.uint8)[::2])
    with pytest.raises(BufferError):
        avp_rs.decode(strided)


def test_encode_is_byte_identical_to_the_sdk():
    from avp.codec import encode as sdk_encode
    from avp.types import AVPMetadata, CompressionLevel, DataType, PayloadType

    payload = np.random.default_rng(1).standard_normal(300).astype(np.float16).tobytes()
    md = AVPMetadata(session_id="s", source_agent_id="a", target_agent_id="b", model_id="q",
                     hidden_dim=300, num_layers=2, payload_type=PayloadType.HIDDEN_STATE,
                     dtype=DataType.FLOAT16, tensor_shape=(1, 300), avp_map_id="map",
                     extra={"z": "1"})
    # One extra entry: upb writes several in hash order, we sort (AVP-WIRE-12).
    for level, name in [(CompressionLevel.NONE, None), (CompressionLevel.FAST, "fast"),
                        (CompressionLevel.BALANCED, "balanced")]:
        ours = avp_rs.encode(payload, session_id="s", source_agent_id="a", target_agent_id="b",
                             model_id="q", hidden_dim=300, num_layers=2, dtype="FLOAT16",
                             tensor_shape=[1, 300], avp_map_id="map", extra={"z": "1"},
                             compression=name)
        assert ours == sdk_encode(payload, md, level)
        assert bytes(avp_rs.decode(ours).payload) == payload


def test_errors_have_kinds_and_parties():
    """AVP-PY-1/AVP-PY-2: one hierarchy, the CLI's kind strings, the party at fault."""
    _, msg = _message()
    bad = bytearray(msg)
    bad[-1] ^= 1
    with pytest.raises(avp_rs.PeerError) as e:
        avp_rs.decode(bad)
    assert e.value.kind == "checksum_mismatch"
    with pytest.raises(avp_rs.PeerError) as e:
        avp_rs.decode(b"AX" + msg[2:])
    assert e.value.kind == "bad_magic"
    with pytest.raises(avp_rs.UsageError) as e:
        avp_rs.encode(b"", dtype="FLOAT64")
    assert e.value.kind == "invalid_argument"
    with pytest.raises(avp_rs.PeerError) as e:
        avp_rs._native.model_hash_json(b"{'a': 1}")
    assert e.value.kind == "invalid_json"
    for cls in (avp_rs.PeerError, avp_rs.UsageError, avp_rs.InternalError):
        assert issubclass(cls, avp_rs.AvpError)
    with pytest.raises(TypeError):
        avp_rs.decode("not a buffer")


def test_peek_reads_no_payload():
    _, msg = _message()
    p = avp_rs.peek(msg[: len(msg) - 10] + bytes(10))
    assert p.payload is None and p.model_id == "m" and p.message_len == len(msg)


def test_stream_decoder_byte_by_byte():
    payload, msg = _message(64, compression="fast")
    s = avp_rs.StreamDecoder()
    needs = [s.feed(msg[i:i + 1]) for i in range(len(msg))]
    assert needs[-1] == 0 and all(n > 0 for n in needs[:-1])
    assert bytes(s.finish().payload) == payload
    s = avp_rs.StreamDecoder()
    with pytest.raises(avp_rs.PeerError) as e:
        s.feed(b"AX\x01\x00" + bytes(8))
    assert e.value.kind == "bad_magic"


def test_kv_arrays_are_views_and_unknown_dtypes_are_refused():
    heads, seq, dim, layers = 2, 3, 4, 2
    rng = np.random.default_rng(0)
    ks = [rng.standard_normal((heads, seq, dim)).astype(np.float16) for _ in range(2 * layers)]
    msg = avp_rs.encode_kv([(ks[0], ks[1]), (ks[2], ks[3])], num_kv_heads=heads, head_dim=dim,
                           seq_len=seq, dtype="float16", num_layers=layers)
    m = avp_rs.decode(msg)
    assert m.payload_type == "KV_CACHE" and m.dtype == "FLOAT16"
    header, arrays = avp_rs.kv_arrays(m.payload)
    assert header["dtype"] == "float16" and len(arrays) == layers
    for (k, v), want_k, want_v in zip(arrays, ks[0::2], ks[1::2]):
        assert np.array_equal(k, want_k) and np.array_equal(v, want_v)
        assert not k.flags.owndata and not k.flags.writeable  # a view of the message
    payload = bytearray(m.payload)
    payload[16] = 7  # dtype byte nobody defined
    with pytest.raises(avp_rs.PeerError) as e:
        avp_rs.kv_arrays(payload)
    assert e.value.kind == "unknown_enum"


def test_kv_bfloat16_views_and_conversion():
    bits = np.array([0x3F80, 0xC000, 0x0000, 0x7F80], dtype=np.uint16).reshape(1, 1, 4)
    payload = avp_rs._native.kv_payload([(bits, bits)], num_kv_heads=1, head_dim=4, seq_len=1,
                                        dtype="bfloat16")
    _, [(k, _)] = avp_rs.kv_arrays(payload)
    assert k.dtype == np.uint16 and np.array_equal(k, bits)
    _, [(k32, _)] = avp_rs.kv_arrays(payload, bfloat16="float32")
    assert k32.ravel().tolist() == [1.0, -2.0, 0.0, float("inf")]


def test_gil_is_released_during_a_large_decode():
    """AVP-PY-3: a second thread makes progress while a 256 MiB message is
    decoded and its checksum verified."""
    payload = np.ones(64 << 20, dtype=np.float32)  # 256 MiB
    msg = avp_rs.encode(payload, tensor_shape=[payload.size])
    del payload
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0)

    t = threading.Thread(target=count)
    t.start()
    time.sleep(0.01)
    # Single-threaded checksum so the decode takes long enough to observe.
    start = time.perf_counter()
    for _ in range(3):
        avp_rs.decode(msg, threads=1)
    end = time.perf_counter()
    stop.set()
    t.join()
    during = [x for x in ticks if start < x < end]
    assert len(during) > 100, f"{len(during)} ticks in {end - start:.3f}s"


def test_mac_round_trip():
    key = bytes(range(32))
    unsigned = avp_rs.encode(b"\x00" * 8, extra={"avp.mac": "0" * 64})
    signed = avp_rs.mac_sign(unsigned, key)
    avp_rs.mac_verify(signed, key)
    tampered = bytearray(signed)
    tampered[-1] ^= 1
    with pytest.raises(avp_rs.PeerError) as e:
        avp_rs.mac_verify(tampered, key)
    assert e.value.kind == "bad_mac"


# --- the SDK drop-in (AVP-PY-4, AVP-PY-5) -----------------------------------


def test_install_patches_every_copy_and_uninstall_restores():
    """AVP-PY-4: every copy of a replaced function is patched, and restored."""
    import avp
    import avp.codec
    import avp.transport

    originals = (avp.codec.decode, avp.decode, avp.transport.decode, avp.compression.decompress)
    with avp_rs.installed():
        assert avp.codec.decode is avp.decode is avp.transport.decode
        assert avp.codec.decode.__module__ == "avp_rs._sdk"
        assert avp.compression.decompress.__module__ == "avp_rs._sdk"
    assert (avp.codec.decode, avp.decode, avp.transport.decode, avp.compression.decompress) == originals


def test_installed_decode_returns_sdk_types_and_raises_sdk_errors():
    """AVP-PY-4: SDK types out, SDK exception classes (with .kind) raised."""
    import avp
    from avp.errors import DecodeError, InvalidMagicError
    from avp.types import AVPMessage, DataType

    payload, msg = _message()
    with avp_rs.installed():
        m = avp.decode(msg)
        assert isinstance(m, AVPMessage) and m.metadata.dtype is DataType.FLOAT32
        assert m.payload == payload and isinstance(m.payload, bytes)
        with pytest.raises(InvalidMagicError):
            avp.decode(b"AX" + msg[2:])
        bad = bytearray(msg)
        bad[-1] ^= 1
        with pytest.raises(DecodeError, match="checksum mismatch") as e:
            avp.decode(bytes(bad))
        assert e.value.kind == "checksum_mismatch"
        assert isinstance(e.value.__cause__, avp_rs.PeerError)


def test_installed_refuses_zstd_bombs():
    """AVP-PY-5: the SDK's decompress allocates what a frame declares; ours stops at the limit."""
    import zstandard

    import avp
    from avp.errors import DecodeError

    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(300 << 20))
    with avp_rs.installed():
        with pytest.raises(DecodeError) as e:
            avp.compression.decompress(bomb)
        assert e.value.kind == "limit_exceeded"
        small = avp.compression.compress(b"abc" * 100)
        assert avp.compression.decompress(small) == b"abc" * 100


def test_installed_refuses_unknown_kv_dtype_instead_of_float16():
    """AVP-PY-5: an unknown KV dtype byte is an error, not float16."""
    import avp.kv_cache
    from avp.errors import DecodeError

    raw = (1).to_bytes(4, "little") * 4 + bytes([9])
    assert avp.kv_cache.KVCacheHeader.from_bytes(raw).dtype == "float16"  # the SDK defect
    with avp_rs.installed():
        with pytest.raises(DecodeError) as e:
            avp.kv_cache.KVCacheHeader.from_bytes(raw)
        assert e.value.kind == "unknown_enum"
    assert avp.kv_cache.KVCacheHeader.from_bytes(raw).dtype == "float16"


def test_installed_context_round_trip_equals_sdk():
    torch = pytest.importorskip("torch")
    from avp.context import AVPContext

    layers = tuple((torch.randn(1, 2, 5, 8, dtype=dt), torch.randn(1, 2, 5, 8, dtype=dt))
                   for dt in (torch.bfloat16,) * 3)
    ctx = AVPContext(past_key_values=layers, model_hash="h", num_steps=3, seq_len=5,
                     model_family="qwen2", hidden_dim=16, num_layers=3)
    sdk_bytes = ctx.to_bytes(session_id="s")
    with avp_rs.installed():
        ours = ctx.to_bytes(session_id="s")
        # Same message; only the order of the extra map entries may differ
        # (upb writes them in hash order, we sort them: AVP-WIRE-12).
        a, b = avp_rs.decode(ours), avp_rs.decode(sdk_bytes)
        assert bytes(a.payload) == bytes(b.payload) and a.extra == b.extra
        assert (a.dtype, a.payload_type, a.num_layers, a.session_id) == \
            (b.dtype, b.payload_type, b.num_layers, b.session_id)
        back = AVPContext.from_bytes(ours)
    assert back.model_hash == "h" and back.num_steps == 3 and back.seq_len == 5
    for (k, v), (k2, v2) in zip(layers, [(layer[0], layer[1]) for layer in back.past_key_values]):
        assert k2.dtype == torch.bfloat16 and torch.equal(k, k2) and torch.equal(v, v2)


# --- AVPContext in one pass (AVP-PY-6) --------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("seq", [3, 4096])  # 4096: 16-32 MiB, the threaded checksum and copy
def test_encode_kv_one_pass_equals_payload_then_encode(dtype, seq):
    """AVP-PY-6: the one-pass KV encoder writes exactly what encoding the
    joined payload writes (header, metadata with the checksum, layers)."""
    heads, dim, layers = 4, 64, 8 if seq > 3 else 2
    rng = np.random.default_rng(seq)
    np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]
    ks = [rng.integers(0, 1 << 15, size=(heads, seq, dim)).astype(np_dtype) for _ in range(2 * layers)]
    pairs = list(zip(ks[0::2], ks[1::2]))
    shape = dict(num_kv_heads=heads, head_dim=dim, seq_len=seq, dtype=dtype)
    meta = dict(session_id="s", model_id="m", hidden_dim=256, num_layers=layers,
                extra={"b": "2", "a": "1"})
    payload = avp_rs._native.kv_payload(pairs, **shape)
    want = avp_rs.encode(payload, payload_type="KV_CACHE", dtype=dtype.upper(), threads=1, **meta)
    for threads in (0, 1, 3):
        assert avp_rs.encode_kv(pairs, threads=threads, **shape, **meta) == want
    assert avp_rs.crc32(payload) == avp_rs.decode(want).payload_checksum
    with pytest.raises(avp_rs.UsageError):
        avp_rs.encode_kv(pairs[:-1] + [(np.ascontiguousarray(ks[0][:, :1]), ks[1])], **shape, **meta)


def test_installed_context_replaces_to_bytes_and_from_bytes_and_restores():
    """AVP-PY-6: install() replaces AVPContext.to_bytes/from_bytes; the cache
    from_bytes builds holds writable tensors equal to the SDK's, in
    DynamicLayers like the SDK's, and uninstall() puts both methods back."""
    torch = pytest.importorskip("torch")
    from avp.context import AVPContext
    from transformers.cache_utils import DynamicCache, DynamicLayer

    originals = (AVPContext.__dict__["to_bytes"], AVPContext.__dict__["from_bytes"])
    layers = tuple((torch.randn(1, 2, 7, 8, dtype=torch.float16), torch.randn(1, 2, 7, 8, dtype=torch.float16))
                   for _ in range(3))
    ctx = AVPContext(past_key_values=DynamicCache(layers), model_hash="h", num_steps=2, seq_len=7,
                     model_family="llama", hidden_dim=16, num_layers=3)
    sdk_bytes = ctx.to_bytes(model_id="x")
    sdk_back = AVPContext.from_bytes(sdk_bytes)
    with avp_rs.installed():
        assert AVPContext.to_bytes.__module__ == "avp_rs._sdk"
        ours = ctx.to_bytes(model_id="x")
        back = AVPContext.from_bytes(ours)
        assert AVPContext.from_bytes(sdk_bytes).past_key_values.get_seq_length() == 7
        with pytest.raises(ValueError, match="HIDDEN_STATE-only"):
            AVPContext(past_key_values=None, model_hash="h", num_steps=0, seq_len=0).to_bytes()
    assert (AVPContext.__dict__["to_bytes"], AVPContext.__dict__["from_bytes"]) == originals
    a, b = avp_rs.decode(ours), avp_rs.decode(sdk_bytes)
    assert bytes(a.payload) == bytes(b.payload) and a.extra == b.extra
    assert (a.dtype, a.model_id, a.hidden_dim, a.flags, len(ours)) == \
        (b.dtype, b.model_id, b.hidden_dim, b.flags, len(sdk_bytes))
    cache, sdk_cache = back.past_key_values, sdk_back.past_key_values
    assert type(cache) is DynamicCache and len(cache.layers) == len(sdk_cache.layers) == 3
    assert cache.layer_class_to_replicate is sdk_cache.layer_class_to_replicate
    for got, want in zip(cache.layers, sdk_cache.layers):
        assert type(got) is DynamicLayer and got.is_initialized
        assert (got.dtype, got.device) == (want.dtype, want.device)
        assert torch.equal(got.keys, want.keys) and torch.equal(got.values, want.values)
        assert got.keys.is_contiguous() and got.keys.shape == want.keys.shape
    cache.layers[0].keys.add_(1)  # owned, writable memory
    assert cache.get_seq_length() == 7 and back.seq_len == 7 and back.num_steps == 2
    # The cache keeps working as transformers' own: update appends.
    k, v = cache.update(torch.zeros(1, 2, 1, 8, dtype=torch.float16),
                        torch.zeros(1, 2, 1, 8, dtype=torch.float16), 1)
    assert k.shape == (1, 2, 8, 8) and cache.get_seq_length(1) == 8


@pytest.mark.parametrize("vocab", [
    {"a": 0, "Ġb": 7, "中": 4294967294, "\"\\\x01": 3},  # the borrowed-token path
    {"a": -1, "b": 2**40, "c": 2**32 - 1, "d": 3},  # ids beyond u32: through an object
    {"a": 2**70, "b": -(2**70), "c": 1},  # ids beyond 64 bits too
    # Enough tokens for the bucketed sort; long ones sharing 16-byte prefixes.
    # (40,000: also enough for the parallel hash.)
    {("ĠĠĠĠĠĠĠĠ" if i % 3 else "") + "中é\"" * (i % 5) + str(i): i for i in range(40_000)},
    {"a": 1, "b": True},  # json.dumps writes true
    {"a": 1, "\ud800": 2},  # lone surrogate: the JSON route
    {},
])
def test_tokenizer_hash_dict_paths_equal_the_sdk(vocab):
    """AVP-PY-4: every route of tokenizer_hash gives the SDK's hash."""
    from avp.handshake import compute_tokenizer_hash

    assert avp_rs.tokenizer_hash(vocab) == compute_tokenizer_hash(vocab)
    for threads in (0, 2, 3):
        assert avp_rs.tokenizer_hash(vocab, threads=threads) == compute_tokenizer_hash(vocab)

"""Drop-in for the ``avp`` SDK 0.6.2: ``install()`` swaps the SDK's codec,
compression, KV-cache (de)serialization and hashing functions for avp_rs
ones (spec/impl/python.md, AVP-PY-4), and ``AVPContext.to_bytes``/``from_bytes``
for versions that copy the layers once (AVP-PY-6).

The replacements take the SDK's arguments, return the SDK's own types
(``AVPMessage``, ``AVPMetadata``, ``AVPHeader``, ``KVCacheHeader``) and raise
the SDK's exception classes (``DecodeError``, ``InvalidMagicError``, ...)
with avp_rs's ``.kind`` attached and the avp_rs error as ``__cause__``.
Where the SDK's behaviour is a documented defect, ours stays safe and says
so with an exception (zstd bombs: ``limit_exceeded``; an unknown KV dtype
byte: ``unknown_enum``), never by silently matching it.

Every module attribute that refers to a replaced function is patched,
including copies made by ``from x import y`` (``avp.decode``,
``avp.transport.decode``, ``avp.connectors.huggingface.compute_model_hash``),
and ``uninstall()`` puts every original back.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Callable, Dict, Iterator, List, Tuple

from . import _native

# Payloads at least this large come back as a memoryview of the input
# (zero-copy); smaller ones as bytes, exactly the SDK's type (AVP-PY-4).
ZERO_COPY_PAYLOAD_FROM = 1 << 20

_lock = threading.Lock()
_patched: List[Tuple[Any, str, Any]] = []  # (owner, attribute, original)


def _sdk():
    import avp.codec
    import avp.compression
    import avp.errors
    import avp.handshake
    import avp.kv_cache
    import avp.types

    return avp


# The SDK's own wording for the failures it also detects.
_SDK_PHRASES = {
    "checksum_mismatch": "Payload checksum mismatch. Message may be corrupted",
    "truncated": "Message truncated",
    "unknown_enum": "Unknown enum value in AVP message",
}


def _raise_sdk(err: "_native.AvpError", data: Any = None) -> None:
    """Re-raises an avp_rs error as the SDK exception its callers expect."""
    from avp.errors import ConfigurationError, DecodeError, InvalidMagicError, UnsupportedVersionError

    kind = getattr(err, "kind", "internal")
    if kind == "bad_magic" and data is not None:
        new = InvalidMagicError(bytes(memoryview(data)[:2]))
    elif kind == "unsupported_version" and data is not None:
        new = UnsupportedVersionError(memoryview(data)[2])
    elif isinstance(err, _native.UsageError):
        new = ConfigurationError(str(err))
    else:
        # Callers match the SDK's wording ("checksum mismatch", "truncated");
        # keep its phrase first, then ours with the kind.
        phrase = _SDK_PHRASES.get(kind)
        new = DecodeError(f"{phrase} ({err})" if phrase else str(err))
    new.kind = kind
    raise new from err


# --- codec ------------------------------------------------------------------

_COMPRESSION_NAMES = {0: None, 1: "fast", 3: "balanced", 19: "max"}


def _enum_name(enum_cls: Any, value: Any) -> str:
    try:
        return enum_cls(int(value)).name
    except ValueError:
        from avp.errors import ConfigurationError

        raise ConfigurationError(f"{enum_cls.__name__} value {value!r} is not defined") from None


def _metadata_kwargs(metadata: Any) -> Dict[str, Any]:
    from avp.types import CommunicationMode, DataType, PayloadType

    return dict(
        session_id=metadata.session_id,
        source_agent_id=metadata.source_agent_id,
        target_agent_id=metadata.target_agent_id,
        model_id=metadata.model_id,
        hidden_dim=int(metadata.hidden_dim),
        num_layers=int(metadata.num_layers),
        payload_type=_enum_name(PayloadType, metadata.payload_type),
        dtype=_enum_name(DataType, metadata.dtype),
        tensor_shape=[int(d) for d in metadata.tensor_shape],
        mode=_enum_name(CommunicationMode, metadata.mode),
        avp_map_id=metadata.avp_map_id,
        extra=dict(metadata.extra) if metadata.extra else None,
    )


def encode(payload: bytes, metadata: Any, compression: Any = None) -> bytes:
    """``avp.codec.encode``, byte-identical output (AVP-WIRE-*)."""
    level = 0 if compression is None else getattr(compression, "value", compression)
    try:
        name = _COMPRESSION_NAMES[level]
    except KeyError:
        from avp.errors import ConfigurationError

        raise ConfigurationError(f"unknown compression level {compression!r}") from None
    try:
        return _native.encode(payload, compression=name, **_metadata_kwargs(metadata))
    except _native.AvpError as e:
        _raise_sdk(e)
        raise  # unreachable: _raise_sdk always raises


def _to_sdk_message(m: "_native.Message", raw_size: int) -> Any:
    from avp.types import AVPHeader, AVPMessage, AVPMetadata, CommunicationMode, DataType, PayloadType

    metadata = AVPMetadata(
        session_id=m.session_id,
        source_agent_id=m.source_agent_id,
        target_agent_id=m.target_agent_id,
        model_id=m.model_id,
        hidden_dim=m.hidden_dim,
        num_layers=m.num_layers,
        payload_type=PayloadType[m.payload_type],
        dtype=DataType[m.dtype],
        tensor_shape=m.tensor_shape,
        mode=CommunicationMode[m.mode],
        compression="zstd" if m.compressed else None,
        avp_map_id=m.avp_map_id,
        extra=m.extra,
    )
    header = AVPHeader(
        version=m.version,
        flags=m.flags,
        payload_length=m.payload_length,
        metadata_length=m.metadata_length,
    )
    payload = m.payload
    if isinstance(payload, memoryview) and payload.nbytes < ZERO_COPY_PAYLOAD_FROM:
        payload = payload.tobytes()
    msg = AVPMessage(header=header, metadata=metadata, payload=payload, raw_size=raw_size)
    # What compatible mode tolerated (AVP-WIRE-20), for callers that look;
    # the SDK type has no field for it.
    msg.avp_rs_warnings = m.warnings
    return msg


def decode(data: bytes) -> Any:
    """``avp.codec.decode``: compatible mode, checksum verified, limits enforced."""
    try:
        m = _native.decode(data)
    except _native.AvpError as e:
        _raise_sdk(e, data)
    return _to_sdk_message(m, len(data))


def encode_kv_cache(kv_bytes: bytes, metadata: Any, compression: Any = None) -> bytes:
    """``avp.codec.encode_kv_cache`` (sets ``payload_type = KV_CACHE`` as the SDK does)."""
    from avp.types import PayloadType

    metadata.payload_type = PayloadType.KV_CACHE
    return encode(kv_bytes, metadata, compression)


# --- compression ----------------------------------------------------------------


def compress(data: bytes, level: Any = None) -> bytes:
    """``avp.compression.compress`` (zstd at the SDK's levels)."""
    from avp.types import CompressionLevel

    if level is None:
        level = CompressionLevel.BALANCED
    value = getattr(level, "value", level)
    if value == 0:
        return data
    return _native.zstd_compress(data, int(value))


def decompress(data: bytes) -> bytes:
    """``avp.compression.decompress``, bounded: a frame that would expand past
    the decoder's cap raises ``DecodeError`` (kind ``limit_exceeded``)
    instead of allocating what the frame header claims."""
    try:
        return _native.zstd_decompress(data)
    except _native.AvpError as e:
        _raise_sdk(e)
        raise


# --- KV cache --------------------------------------------------------------------


def serialize_kv_cache(past_key_values: Any) -> Tuple[bytes, Any]:
    """``avp.kv_cache.serialize_kv_cache``: same bytes, written in one pass."""
    arrays, header = _kv_layers(past_key_values)
    try:
        data = _native.kv_payload(
            arrays,
            num_kv_heads=header.num_kv_heads,
            head_dim=header.head_dim,
            seq_len=header.seq_len,
            dtype=header.dtype,
        )
    except _native.AvpError as e:
        _raise_sdk(e)
        raise
    return data, header


def kv_header_from_bytes(cls: Any, data: bytes) -> Any:
    """``KVCacheHeader.from_bytes``: an unknown dtype byte raises
    ``DecodeError`` (kind ``unknown_enum``) where the SDK reads float16."""
    from avp.errors import DecodeError

    view = memoryview(data)
    if view.nbytes < 17:
        raise DecodeError(f"KVCacheHeader too short: {view.nbytes} bytes, need 17")
    raw = bytes(view[:17])
    num_layers, heads, dim, seq = (int.from_bytes(raw[i:i + 4], "little") for i in range(0, 16, 4))
    names = {0: "float32", 1: "float16", 2: "bfloat16"}
    if raw[16] not in names:
        err = DecodeError(
            f"unknown KV-cache dtype byte {raw[16]} (0 float32, 1 float16, 2 bfloat16); "
            "the SDK would read it as float16"
        )
        err.kind = "unknown_enum"
        raise err
    return cls(num_layers=num_layers, num_kv_heads=heads, head_dim=dim, seq_len=seq, dtype=names[raw[16]])


def deserialize_kv_cache(data: bytes, device: str = "cpu") -> Tuple[Tuple[Tuple[Any, Any], ...], Any]:
    """``avp.kv_cache.deserialize_kv_cache``: validated layout, numpy views,
    one copy into torch (tensors own writable memory, as the SDK's do)."""
    import torch
    from avp.kv_cache import KVCacheHeader

    from . import kv_arrays

    try:
        info, arrays = kv_arrays(data)
    except _native.AvpError as e:
        _raise_sdk(e, None)
        raise
    header = KVCacheHeader(
        num_layers=info["num_layers"],
        num_kv_heads=info["num_kv_heads"],
        head_dim=info["head_dim"],
        seq_len=info["seq_len"],
        dtype=info["dtype"],
    )
    # One copy per tensor, into memory torch owns (writable, as the SDK's
    # tensors are). Measured: one 256 MiB buffer for all of them is 2-3x
    # slower (a fresh mapping page-faults on every page; per-tensor blocks
    # reuse the allocator's freed memory).
    bf16 = header.dtype == "bfloat16"
    layers = []
    for k_np, v_np in arrays:
        pair = []
        for a in (k_np, v_np):
            t = torch.from_numpy((a.view("int16") if bf16 else a).copy())
            if bf16:
                t = t.view(torch.bfloat16)
            pair.append(t.unsqueeze(0).to(device=device))
        layers.append(tuple(pair))
    return tuple(layers), header


# --- AVPContext ------------------------------------------------------------------


def _kv_layers(past_key_values: Any) -> Tuple[List[Tuple[Any, Any]], Any]:
    """The (K, V) buffers of a KV-cache, as ``serialize_kv_cache`` lays them
    out (batch dimension dropped, bfloat16 as int16), and its header."""
    import torch
    from avp.kv_cache import KVCacheHeader, dynamic_cache_to_legacy

    layers = dynamic_cache_to_legacy(past_key_values)
    if not layers:
        raise ValueError("Empty KV-cache")
    k0 = layers[0][0]
    header = KVCacheHeader(
        num_layers=len(layers),
        num_kv_heads=k0.shape[1],
        head_dim=k0.shape[3],
        seq_len=k0.shape[2],
        dtype=str(k0.dtype).replace("torch.", ""),
    )
    if header.dtype not in ("float32", "float16", "bfloat16"):
        from avp.errors import ConfigurationError

        raise ConfigurationError(
            f"KV-cache dtype {header.dtype} has no KV dtype byte (float32, float16, bfloat16); "
            "the SDK would label it float16"
        )
    arrays = []
    for k, v in layers:
        pair = []
        for t in (k, v):
            # Views for contiguous CPU tensors: no copy before the message.
            t = t.squeeze(0).contiguous().cpu()
            if t.dtype == torch.bfloat16:
                t = t.view(torch.int16)
            pair.append(t.numpy())
        arrays.append(tuple(pair))
    return arrays, header


def context_to_bytes(
    self: Any,
    session_id: str = "",
    source_agent_id: str = "",
    target_agent_id: str = "",
    model_id: str = "",
) -> bytes:
    """``AVPContext.to_bytes``: the same message, with the layers copied once,
    straight into it, and the checksum computed over them in place
    (AVP-PY-6)."""
    if self.past_key_values is None:
        raise ValueError(
            "Cannot serialize a HIDDEN_STATE-only context via to_bytes(). "
            "Only KV_CACHE contexts (with past_key_values) support "
            "serialization. Use output=OutputType.KV_CACHE in think()."
        )
    arrays, header = _kv_layers(self.past_key_values)
    # The SDK's metadata dtype for each KV dtype (float32 is its fallback).
    metadata_dtype = {"float16": "FLOAT16", "bfloat16": "BFLOAT16"}.get(header.dtype, "FLOAT32")
    extra = {
        "model_hash": self.model_hash,
        "model_family": self.model_family,
        "num_steps": str(self.num_steps),
    }
    try:
        return _native.encode_kv(
            arrays,
            num_kv_heads=header.num_kv_heads,
            head_dim=header.head_dim,
            seq_len=header.seq_len,
            dtype=header.dtype,
            session_id=session_id,
            source_agent_id=source_agent_id,
            target_agent_id=target_agent_id,
            model_id=model_id,
            hidden_dim=int(self.hidden_dim),
            num_layers=int(self.num_layers),
            mode="LATENT",
            extra=extra,
            metadata_dtype=metadata_dtype,
        )
    except _native.AvpError as e:
        _raise_sdk(e)
        raise


def _dynamic_cache(layers: Tuple[Tuple[Any, Any], ...]) -> Any:
    """``legacy_to_dynamic_cache`` without its copy: transformers 5.x builds
    each layer by ``torch.cat``-ing onto an empty tensor (a second full copy
    of the cache); here it builds them from zero-length slices and the layers
    then take the tensors themselves. Anything else (transformers 4.x, other
    layer classes) goes through the SDK's function."""
    from avp.kv_cache import legacy_to_dynamic_cache

    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:
        return legacy_to_dynamic_cache(layers)
    if hasattr(DynamicCache, "from_legacy_cache"):
        return legacy_to_dynamic_cache(layers)
    cache = DynamicCache(tuple((k[..., :0, :], v[..., :0, :]) for k, v in layers))
    built = getattr(cache, "layers", None)
    if not isinstance(built, list) or len(built) != len(layers) or any(
        type(layer) is not DynamicLayer for layer in built
    ):
        return legacy_to_dynamic_cache(layers)
    for layer, (k, v) in zip(built, layers):
        layer.keys, layer.values = k, v
    return cache


def context_from_bytes(cls: Any, data: bytes, device: str = "cpu") -> Any:
    """``AVPContext.from_bytes``: the SDK's steps with avp_rs's decode and
    KV parse, and a ``DynamicCache`` that holds the decoded tensors instead
    of copies of them (AVP-PY-6)."""
    import avp.codec
    import avp.kv_cache

    msg = avp.codec.decode(data)
    extra = msg.metadata.extra
    legacy_kv, kv_header = avp.kv_cache.deserialize_kv_cache(msg.payload, device=device)
    return cls(
        past_key_values=_dynamic_cache(legacy_kv),
        model_hash=extra.get("model_hash", ""),
        num_steps=int(extra.get("num_steps", "0")),
        seq_len=kv_header.seq_len,
        model_family=extra.get("model_family", ""),
        hidden_dim=msg.metadata.hidden_dim,
        num_layers=msg.metadata.num_layers,
    )


# --- hashing ---------------------------------------------------------------------


def compute_model_hash(config: Dict[str, Any]) -> str:
    """``avp.handshake.compute_model_hash`` (AVP-HASH-1)."""
    from . import model_hash

    return model_hash(config)


def compute_tokenizer_hash(tokenizer: Any) -> str:
    """``avp.handshake.compute_tokenizer_hash`` (AVP-HASH-10): same inputs
    (an object with ``get_vocab()``, or a mapping), "" for anything else."""
    if hasattr(tokenizer, "get_vocab"):
        vocab = tokenizer.get_vocab()
    elif hasattr(tokenizer, "items"):
        vocab = dict(tokenizer)
    else:
        return ""
    from . import tokenizer_hash

    try:
        return tokenizer_hash(vocab)
    except _native.AvpError:
        # Vocabularies that are not {str: int} (the SDK hashes whatever
        # json.dumps makes of them): leave those to the SDK's code.
        return _ORIGINALS["compute_tokenizer_hash"](tokenizer)


_ORIGINALS: Dict[str, Callable[..., Any]] = {}


def _replacements() -> List[Tuple[Any, str, Any]]:
    avp = _sdk()
    return [
        (avp.codec, "encode", encode),
        (avp.codec, "decode", decode),
        (avp.codec, "encode_kv_cache", encode_kv_cache),
        (avp.compression, "compress", compress),
        (avp.compression, "decompress", decompress),
        (avp.kv_cache, "serialize_kv_cache", serialize_kv_cache),
        (avp.kv_cache, "deserialize_kv_cache", deserialize_kv_cache),
        (avp.handshake, "compute_model_hash", compute_model_hash),
        (avp.handshake, "compute_tokenizer_hash", compute_tokenizer_hash),
    ]


def install() -> None:
    """Makes the installed ``avp`` SDK use avp_rs (idempotent)."""
    with _lock:
        if _patched:
            return
        for owner, name, new in _replacements():
            original = getattr(owner, name)
            _ORIGINALS[name] = original
            # Every module that copied the function (`from .codec import decode`).
            for mod_name, module in list(sys.modules.items()):
                if module is None or not (mod_name == "avp" or mod_name.startswith("avp.")):
                    continue
                if module is owner:
                    continue
                if getattr(module, name, None) is original:
                    _patched.append((module, name, original))
                    setattr(module, name, new)
            _patched.append((owner, name, original))
            setattr(owner, name, new)
        from avp.kv_cache import KVCacheHeader

        original_from_bytes = KVCacheHeader.__dict__["from_bytes"]
        _patched.append((KVCacheHeader, "from_bytes", original_from_bytes))
        KVCacheHeader.from_bytes = classmethod(kv_header_from_bytes)
        from avp.context import AVPContext

        for name, new in (("to_bytes", context_to_bytes), ("from_bytes", classmethod(context_from_bytes))):
            _patched.append((AVPContext, name, AVPContext.__dict__[name]))
            setattr(AVPContext, name, new)


def uninstall() -> None:
    """Puts every original SDK function back."""
    with _lock:
        while _patched:
            owner, name, original = _patched.pop()
            setattr(owner, name, original)
        _ORIGINALS.clear()


def is_installed() -> bool:
    """Whether ``install()`` is in effect."""
    return bool(_patched)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """``with avp_rs.installed(): ...``: the SDK uses avp_rs inside the block."""
    was = is_installed()
    install()
    try:
        yield
    finally:
        if not was:
            uninstall()

"""Type stubs of the native module (python/src/). Import ``avp_rs`` instead."""

from os import PathLike
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from typing_extensions import Buffer

class AvpError(Exception):
    """Base of every avp_rs error; ``kind`` is the stable kind string."""

    kind: str

class PeerError(AvpError):
    """The input (received bytes, a file) is at fault."""

class UsageError(AvpError):
    """The call is at fault (an impossible argument)."""

class InternalError(AvpError):
    """A bug in avp_rs."""

class Message:
    """A decoded (or peeked) message. Read-only; fields are read lazily."""

    @property
    def version(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def payload_length(self) -> int: ...
    @property
    def metadata_length(self) -> int: ...
    @property
    def message_len(self) -> int: ...
    @property
    def compressed(self) -> bool: ...
    @property
    def session_id(self) -> str: ...
    @property
    def source_agent_id(self) -> str: ...
    @property
    def target_agent_id(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def hidden_dim(self) -> int: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def payload_type(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def tensor_shape(self) -> Tuple[int, ...]: ...
    @property
    def mode(self) -> str: ...
    @property
    def compression(self) -> Optional[str]: ...
    @property
    def avp_map_id(self) -> str: ...
    @property
    def extra(self) -> Dict[str, str]: ...
    @property
    def payload_checksum(self) -> Optional[int]: ...
    @property
    def warnings(self) -> List[Tuple[str, str]]: ...
    @property
    def payload(self) -> Union[memoryview, bytes, None]:
        """A memoryview into the input (bytes if it was compressed; None after peek)."""
    def __len__(self) -> int: ...

class StreamDecoder:
    def __init__(self, strict: bool = False) -> None: ...
    def feed(self, chunk: Buffer) -> int:
        """Feeds bytes; returns how many more are needed (0 once complete)."""
    @property
    def buffered(self) -> int: ...
    def finish(self) -> Message: ...

def decode(buf: Buffer, strict: bool = False, verify_checksum: bool = True, threads: int = 0) -> Message: ...
def peek(buf: Buffer, strict: bool = False) -> Message: ...
def encode(
    payload: Buffer,
    *,
    session_id: str = "",
    source_agent_id: str = "",
    target_agent_id: str = "",
    model_id: str = "",
    hidden_dim: int = 0,
    num_layers: int = 0,
    payload_type: str = "HIDDEN_STATE",
    dtype: str = "FLOAT32",
    tensor_shape: Sequence[int] = (),
    mode: str = "LATENT",
    avp_map_id: str = "",
    extra: Optional[Dict[str, str]] = None,
    compression: Optional[str] = None,
    threads: int = 0,
) -> bytes: ...
def encode_kv(
    layers: Sequence[Tuple[Buffer, Buffer]],
    *,
    num_kv_heads: int,
    head_dim: int,
    seq_len: int,
    dtype: str,
    session_id: str = "",
    source_agent_id: str = "",
    target_agent_id: str = "",
    model_id: str = "",
    hidden_dim: int = 0,
    num_layers: int = 0,
    tensor_shape: Sequence[int] = (),
    mode: str = "LATENT",
    avp_map_id: str = "",
    extra: Optional[Dict[str, str]] = None,
    metadata_dtype: Optional[str] = None,
    compression: Optional[str] = None,
    threads: int = 0,
) -> bytes: ...
def kv_payload(
    layers: Sequence[Tuple[Buffer, Buffer]], *, num_kv_heads: int, head_dim: int, seq_len: int, dtype: str
) -> bytes: ...
def kv_layout(
    payload: Buffer, strict: bool = False
) -> Tuple[int, int, int, int, str, int, List[Tuple[str, str]]]: ...
def crc32(buf: Buffer, threads: int = 0) -> int: ...
def model_hash_json(text: bytes) -> str: ...
def tokenizer_hash_json(text: bytes, threads: int = 0) -> str: ...
def tokenizer_hash_file(path: Union[str, PathLike[str]], threads: int = 0) -> str: ...
def weights_digest(dir: Union[str, PathLike[str]], threads: int = 0) -> str: ...
def identity_json(config_text: bytes, tokenizer_hash: str = "") -> str: ...
def mac_sign(message: Buffer, key_bytes: bytes) -> bytes: ...
def mac_verify(message: Buffer, key_bytes: bytes) -> None: ...
def zstd_compress(data: Buffer, level: int) -> bytes: ...
def zstd_decompress(data: Buffer, max_len: Optional[int] = None) -> bytes: ...
def run_json(
    vectors: str,
    builtin: Sequence[str],
    adapters: Sequence[str],
    only: Sequence[str],
    expectations: Optional[str] = None,
    strict: bool = False,
    timeout: float = 30.0,
    verbose: bool = False,
) -> Tuple[int, str, str]: ...
def tokenizer_hash_dict(vocab: Dict[str, int], threads: int = 0) -> Optional[str]: ...
def resolve_json(
    local: bytes,
    remote: bytes,
    local_vocab: Optional[bytes] = None,
    remote_vocab: Optional[bytes] = None,
    maps: Sequence[str] = (),
    local_weights_digest: Optional[str] = None,
    remote_weights_digest: Optional[str] = None,
) -> Tuple[str, str, str, bool]: ...

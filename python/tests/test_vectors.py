"""Every golden vector of conformance/vectors decoded from Python gives the
outcome the corpus (and so the CLI) records: AVP-PY-1, AVP-PY-3."""

import json

import pytest

import avp_rs
from conftest import VECTORS

WIRE = json.loads((VECTORS / "wire" / "cases.json").read_text())["cases"]
DECODE_CASES = [c for c in WIRE if c["op"] == "decode" and "file" in c["input"]]


def _bytes(case):
    return (VECTORS / "wire" / case["input"]["file"]).read_bytes()


def _check_decoded(m, want):
    h = want["header"]
    assert (m.version, m.flags, m.payload_length, m.metadata_length) == (
        h["version"], h["flags"], h["payload_length"], h["metadata_length"])
    md = want["metadata"]
    for field in ("session_id", "source_agent_id", "target_agent_id", "model_id", "hidden_dim",
                  "num_layers", "payload_type", "dtype", "mode", "avp_map_id",
                  "extra", "payload_checksum"):
        assert getattr(m, field) == md[field], field
    # The corpus records the SDK's view: "zstd" exactly when the header bit is set.
    assert ("zstd" if m.compressed else None) == md["compression"]
    assert list(m.tensor_shape) == md["tensor_shape"]
    assert len(m.payload) == want["payload"]["length"]
    assert avp_rs.crc32(m.payload) == want["payload"]["crc32"]


@pytest.mark.parametrize("case", DECODE_CASES, ids=[c["id"] for c in DECODE_CASES])
def test_wire_vector(case):
    """AVP-PY-1: same verdict and error kind as the corpus, compatible and strict."""
    data = _bytes(case)
    want = case["expect"]
    if want["result"] == "invalid":
        with pytest.raises(avp_rs.PeerError) as e:
            avp_rs.decode(data)
        assert e.value.kind == want["error_kind"]
        assert isinstance(e.value, avp_rs.AvpError)
        return
    m = avp_rs.decode(data)
    if want.get("decoded"):
        _check_decoded(m, want["decoded"])
    if want["result"] == "non_strict":
        assert {code for code, _ in m.warnings} == set(want["warnings"])
        with pytest.raises(avp_rs.PeerError) as e:
            avp_rs.decode(data, strict=True)
        assert e.value.kind == want["strict_error_kind"]
    else:
        assert m.warnings == []
        _check_decoded(avp_rs.decode(data, strict=True), want["decoded"])
    kv = want.get("kv")
    decoded_kv = (want.get("decoded") or {}).get("kv")
    if kv is not None and kv.get("result") == "invalid":
        with pytest.raises(avp_rs.PeerError) as e:
            avp_rs.kv_arrays(m.payload)
        assert e.value.kind == kv["error_kind"]
    elif decoded_kv and "sdk_error" in decoded_kv:
        with pytest.raises(avp_rs.PeerError):
            avp_rs.kv_arrays(m.payload)
    elif decoded_kv:
        header, layers = avp_rs.kv_arrays(m.payload)
        for k in ("num_layers", "num_kv_heads", "head_dim", "seq_len", "dtype"):
            assert header[k] == decoded_kv[k], k
        assert len(layers) == decoded_kv["num_layers"]


@pytest.mark.parametrize("case", DECODE_CASES[:40], ids=[c["id"] for c in DECODE_CASES[:40]])
def test_every_prefix_fails_cleanly(case):
    """Truncation anywhere gives an AvpError, never a crash or another exception."""
    data = _bytes(case)
    for n in range(min(len(data), 400)):
        try:
            avp_rs.decode(data[:n])
        except avp_rs.AvpError as e:
            assert e.kind
        else:  # pragma: no cover - a proper prefix of a message never decodes
            pytest.fail(f"prefix {n} decoded")


def test_garbage_never_crashes():
    import random

    rng = random.Random(7)
    valid = _bytes(DECODE_CASES[0])
    for i in range(3000):
        buf = bytearray(valid)
        for _ in range(rng.randrange(1, 6)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        if i % 3 == 0:
            buf = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        for strict in (False, True):
            try:
                m = avp_rs.decode(buf, strict=strict)
                m.extra, m.tensor_shape, bytes(m.payload)
            except avp_rs.AvpError as e:
                assert e.kind in {"bad_magic", "unsupported_version", "truncated", "malformed_metadata",
                                  "unknown_enum", "checksum_mismatch", "decompression",
                                  "limit_exceeded", "inconsistent"}


def test_model_hash_vectors():
    """model_hash equals the corpus for every valid case; invalid JSON raises."""
    cases = json.loads((VECTORS / "handshake" / "model_hash.json").read_text())["cases"]
    checked = 0
    for c in cases:
        if "file" in c["input"]:
            text = (VECTORS / "handshake" / c["input"]["file"]).read_bytes()
        else:
            text = c["input"]["text"].encode("utf-8", "surrogatepass")
        if c["expect"]["result"] == "valid":
            assert avp_rs._native.model_hash_json(text) == c["expect"]["model_hash"], c["id"]
            checked += 1
        else:
            with pytest.raises(avp_rs.PeerError):
                avp_rs._native.model_hash_json(text)
    assert checked >= 20


def test_model_hash_of_dicts_matches_sdk():
    from avp.handshake import compute_model_hash

    for path in sorted((VECTORS / "handshake" / "configs").glob("*.json")):
        config = json.loads(path.read_text())
        assert avp_rs.model_hash(config) == compute_model_hash(config), path.name
    odd = {"b": [1, 1.0, -0.0, 2**70, float("nan"), None, True], "a": {"é": "\ud800"}}
    assert avp_rs.model_hash(odd) == compute_model_hash(odd)


def test_tokenizer_hash_vectors():
    cases = json.loads((VECTORS / "handshake" / "tokenizer_hash.json").read_text())["cases"]
    checked = 0
    for c in cases:
        want = c["expect"].get("tokenizer_hash")
        if c["expect"]["result"] != "valid" or want is None:
            continue
        if "vocab" in c["input"]:
            assert avp_rs.tokenizer_hash(c["input"]["vocab"]) == want, c["id"]
        elif "file" in c["input"] and c["op"] == "tokenizer_hash":
            assert avp_rs.tokenizer_hash(VECTORS / "handshake" / c["input"]["file"]) == want, c["id"]
        elif "file" in c["input"]:
            vocab = json.loads((VECTORS / "handshake" / c["input"]["file"]).read_text())
            assert avp_rs.tokenizer_hash(vocab) == want, c["id"]
        else:
            continue
        checked += 1
    assert checked >= 15


def test_mac_vectors():
    cases = json.loads((VECTORS / "mac" / "cases.json").read_text())["cases"]
    for c in cases:
        data = (VECTORS / "mac" / c["input"]["file"]).read_bytes()
        key = bytes.fromhex(c["input"]["key_file_hex"]) if "key_file_hex" in c["input"] else \
            (VECTORS / "mac" / c["input"]["key_file"]).read_bytes()
        if c["expect"]["result"] == "valid":
            avp_rs.mac_verify(data, key)
        else:
            with pytest.raises(avp_rs.AvpError) as e:
                avp_rs.mac_verify(data, key)
            assert e.value.kind == c["expect"]["error_kind"], c["id"]


def test_conformance_run_matches_corpus():
    """avp_rs.conformance.run: the whole corpus passes for the built-in
    subject with the CLI's exit code and report shape."""
    report = avp_rs.conformance.run(str(VECTORS), builtin=["compatible", "strict"])
    assert report.exit_code == 0, report.text
    assert len(report.report["subjects"]) == 2
    verdicts = report.verdicts(0)
    assert verdicts["wire/valid/hidden-f32"] == "PASS"
    assert len(verdicts) >= len(DECODE_CASES)
    assert "PASS" in report.text


def test_weights_digest_vectors():
    """weights_digest of every corpus model directory: the corpus's digest, or a PeerError."""
    cases = json.loads((VECTORS / "handshake" / "weights.json").read_text())["cases"]
    for c in cases:
        d = VECTORS / "handshake" / c["input"]["dir"]
        if c["expect"]["result"] == "valid":
            assert avp_rs.weights_digest(str(d)) == c["expect"]["weights_digest"], c["id"]
        else:
            with pytest.raises(avp_rs.PeerError):
                avp_rs.weights_digest(str(d))


def test_identity_of_model_dirs():
    """identity(config, tokenizer_hash) equals the corpus's identity of each model directory."""
    cases = json.loads((VECTORS / "handshake" / "identity.json").read_text())["cases"]
    checked = 0
    for c in cases:
        if "model_dir" not in c["input"] or c["expect"]["result"] != "valid":
            continue
        d = VECTORS / "handshake" / c["input"]["model_dir"]
        config = json.loads((d / "config.json").read_text())
        want = c["expect"]["identity"]
        tok = avp_rs.tokenizer_hash(d / "tokenizer.json") if (d / "tokenizer.json").exists() else ""
        got = avp_rs.identity(config, tok)
        for k, v in want.items():
            assert got.get(k, "") == v, (c["id"], k)
        checked += 1
    assert checked >= 2


def test_resolve_vectors():
    """resolve() gives the corpus's mode, path and map id for every resolution case."""
    cases = json.loads((VECTORS / "handshake" / "resolve.json").read_text())["cases"]
    for c in cases:
        inp, want = c["input"], c["expect"]
        got = avp_rs.resolve(
            inp["local"], inp["remote"], inp.get("local_vocab"), inp.get("remote_vocab"),
            inp.get("maps", []), inp.get("local_weights_digest"), inp.get("remote_weights_digest"))
        assert (got["mode"], got["resolution_path"], got["avp_map_id"]) == \
            (want["mode"], want["resolution_path"], want["avp_map_id"]), c["id"]
        if "weights_mismatch" in want:
            assert got["weights_mismatch"] == want["weights_mismatch"], c["id"]

//! The AVP HTTP binding (spec/protocol/http.md): an agent server with a context store,
//! a client, and a router that forwards messages without decoding tensors.
//!
//! One port serves HTTP/1.1 and HTTP/2 prior knowledge, or HTTPS with ALPN
//! (rustls, optional mutual TLS). Every request is checked (auth, version,
//! content type, declared size) before its body is read, and bodies are read
//! against the limit as they stream, within deadlines, taking memory budget
//! only for bytes that arrived (spec/impl/transport.md, AVP-HTTP-17/18). Hellos are
//! answered by the `avp-handshake` crate, and the sessions it issues are
//! checked on transmit (AVP-HTTP-34/35).
#![forbid(unsafe_code)]

// One job per module; no two import each other (the server core sees only
// `endpoint::Handler`, never the roles).
mod agent; // the agent role: checks and stores what it receives
pub mod assembly; // chunked contexts assembled on disk, made visible when verified
mod body; // request/response bodies: bounded reads, streamed bodies, JSON envelopes
mod budget; // the memory budget shared by in-flight requests, with a share per peer
pub mod chunk_client; // sends a chunked context chunk by chunk, resuming what the receiver lacks
mod client; // the HTTP client: handshake, transmit, text, health, with retries
mod endpoint; // shared HTTP plumbing: paths, server settings, the Handler trait, error answers
mod error; // the crate's error type
pub mod framing; // the bits of HTTP parsed by hand (first head scan, header values)
pub mod hello; // hellos: the handshake crate's state machine behind the handshake endpoint
pub mod kv_wire; // compact contexts received: KV_CACHE_EXT capabilities, dequantize, delta assembly
mod router; // the router role: forwards by target agent id without decoding tensors
mod server; // the server core: listener, TLS, first-head guard, common checks, dispatch
pub mod store; // the context store: received messages on disk or in memory
pub mod tls; // rustls configurations from PEM files
pub mod wire; // thin calls into the codec: peek header/routing, full check, error status

pub use agent::{Agent, DEFAULT_MEMORY_BUDGET, Received, ReceivedHook};
pub use avp_handshake::{ModelIdentity, WeightsDigest};
pub use body::{OutgoingBody, ResponseBody};
pub use client::{AvpClient, ClientConfig};
pub use endpoint::{
    AVP_VERSION_HEADER, CONTENT_TYPE_AVP, DEFAULT_MAX_HEAD, DEFAULT_MIN_RATE, Endpoint, Handler,
    HandlerFuture, PATH_CHUNK, PATH_CHUNK_STATUS, PATH_HANDSHAKE, PATH_HEALTH, PATH_TEXT,
    PATH_TRANSMIT, Peer, ServerConfig,
};
pub use error::TransportError;
pub use framing::constant_time_eq;
pub use hello::{HandshakeResult, HandshakeServer};
pub use router::{DEFAULT_UPSTREAM_TIMEOUT, MAX_ROUTED_METADATA, Router};
pub use server::Server;
pub use store::{ContextStore, StoredContext};

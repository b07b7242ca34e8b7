//! The AVP HTTP binding (spec/http.md): an agent server with a context store,
//! a client, and a router that forwards messages without decoding tensors.
//!
//! One port serves HTTP/1.1 and HTTP/2 prior knowledge, or HTTPS with ALPN
//! (rustls, optional mutual TLS). Every request is checked (auth, version,
//! content type, declared size) before its body is read, and bodies are read
//! against the limit as they stream, within deadlines, taking memory budget
//! only for bytes that arrived (spec/http.md, AVP-HTTP-17/18). Hellos are
//! answered by the `avp-handshake` crate, and the sessions it issues are
//! checked on transmit (AVP-HTTP-34/35).
#![forbid(unsafe_code)]

mod agent;
mod body;
mod budget;
mod client;
mod error;
pub mod framing;
pub mod hello;
mod router;
mod server;
pub mod store;
pub mod tls;
pub mod wire;

pub use agent::{Agent, DEFAULT_MEMORY_BUDGET, Received, ReceivedHook};
pub use avp_handshake::{ModelIdentity, WeightsDigest};
pub use body::{OutgoingBody, ResponseBody};
pub use client::{AvpClient, ClientConfig};
pub use error::TransportError;
pub use hello::{HandshakeResult, HandshakeServer};
pub use router::{DEFAULT_UPSTREAM_TIMEOUT, MAX_ROUTED_METADATA, Router};
pub use server::{
    AVP_VERSION_HEADER, CONTENT_TYPE_AVP, DEFAULT_MAX_HEAD, DEFAULT_MIN_RATE, PATH_HANDSHAKE,
    PATH_HEALTH, PATH_TEXT, PATH_TRANSMIT, Role, Server, ServerConfig, constant_time_eq,
};
pub use store::{ContextStore, StoredContext};

//! The AVP HTTP binding (spec/http.md): an agent server with a context store,
//! a client, and a router that forwards messages without decoding tensors.
//!
//! One port serves HTTP/1.1 and HTTP/2 prior knowledge. Every request is
//! checked (auth, version, content type, declared size) before its body is
//! read, and bodies are read against the limit as they stream.
#![forbid(unsafe_code)]

mod agent;
mod body;
mod client;
mod error;
pub mod hello;
mod router;
mod server;
pub mod store;
pub mod wire;

pub use agent::{Agent, Received, ReceivedHook};
pub use avp_handshake::ModelIdentity;
pub use body::{OutgoingBody, ResponseBody};
pub use client::{AvpClient, ClientConfig};
pub use error::TransportError;
pub use router::{MAX_ROUTED_METADATA, Router};
pub use server::{
    AVP_VERSION_HEADER, CONTENT_TYPE_AVP, PATH_HANDSHAKE, PATH_HEALTH, PATH_TEXT, PATH_TRANSMIT,
    Role, Server, ServerConfig, constant_time_eq,
};
pub use store::{ContextStore, StoredContext};

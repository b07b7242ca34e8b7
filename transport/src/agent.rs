//! An agent endpoint: receives messages, checks them as they stream in, and
//! keeps them in a [`ContextStore`] (AVP-HTTP-30..35).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use avp_handshake::ModelIdentity;
use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::body::{LimitedReader, ReadError, ResponseBody, error_response, json_response};
use crate::hello::{self, HelloProblem};
use crate::server::{Endpoint, ServerConfig, too_large};
use crate::store::{ContextStore, StoredContext, new_id};
use crate::wire::{
    HEADER_LEN, WireError, check_complete_signed, peek_header, peek_routing, status_for,
};
use avp_codec::mac::MacKey;

/// What an agent reports after each accepted request (for progress lines).
#[derive(Debug, Clone)]
pub struct Received {
    /// The stored context.
    pub context: StoredContext,
    /// `"transmit"` or `"text"`.
    pub endpoint: &'static str,
    /// Time from the request's arrival to the durable store.
    pub elapsed: Duration,
}

/// Called after every stored message.
pub type ReceivedHook = Arc<dyn Fn(&Received) + Send + Sync>;

/// An agent endpoint.
pub struct Agent {
    agent_id: String,
    identity: ModelIdentity,
    store: Arc<ContextStore>,
    hook: Option<ReceivedHook>,
    /// Bytes of message buffers all requests together may hold, in MiB permits
    /// (AVP-HTTP-17).
    budget: Arc<tokio::sync::Semaphore>,
    budget_mib: u32,
    /// When set, transmits must carry a valid keyed MAC (AVP-MAC-7).
    mac_key: Option<Arc<MacKey>>,
}

/// Default for [`Agent::with_memory_budget`]: 4 GiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 4 << 30;
const MIB: u64 = 1 << 20;

impl Agent {
    /// An agent with this id and model identity (ModelIdentity JSON form) that
    /// puts what it receives into `store`.
    pub fn new(
        agent_id: impl Into<String>,
        identity: ModelIdentity,
        store: Arc<ContextStore>,
    ) -> Self {
        let budget_mib = budget_permits(DEFAULT_MEMORY_BUDGET);
        Self {
            agent_id: agent_id.into(),
            identity,
            store,
            hook: None,
            budget: Arc::new(tokio::sync::Semaphore::new(budget_mib as usize)),
            budget_mib,
            mac_key: None,
        }
    }

    /// Requires every binary transmit to carry a valid keyed MAC made with
    /// `key` (spec/mac.md, AVP-MAC-7): unsigned or badly signed messages are
    /// refused with 400 and the error kind `bad_mac`, and nothing is stored.
    pub fn with_mac_key(mut self, key: MacKey) -> Self {
        self.mac_key = Some(Arc::new(key));
        self
    }

    /// Bounds the message bytes all requests together may buffer (rounded up
    /// to whole MiB). A request whose declared size does not fit waits until
    /// earlier ones are stored; one larger than the whole budget waits for
    /// all of it (AVP-HTTP-17).
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.budget_mib = budget_permits(bytes);
        self.budget = Arc::new(tokio::sync::Semaphore::new(self.budget_mib as usize));
        self
    }

    /// Calls `hook` after every stored message.
    pub fn on_received(mut self, hook: ReceivedHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The store this agent writes to.
    pub fn store(&self) -> &Arc<ContextStore> {
        &self.store
    }

    pub(crate) async fn handle(
        &self,
        endpoint: Endpoint,
        request: Request<Incoming>,
        config: &ServerConfig,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let body = request.into_body();
        match endpoint {
            Endpoint::Transmit => self.transmit(body, config, started).await,
            Endpoint::Handshake => match read_bytes(body, config.max_json, config).await {
                Ok(bytes) => match hello::answer(&self.agent_id, &self.identity, &bytes) {
                    Ok(answer) => json_bytes_response(answer),
                    Err(HelloProblem::NotJson(why)) => error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid_json",
                        &format!("body is not JSON: {why}"),
                    ),
                    Err(HelloProblem::NotAHello(why)) => {
                        error_response(StatusCode::BAD_REQUEST, "invalid_hello", &why)
                    }
                },
                Err(response) => *response,
            },
            Endpoint::Text => match read_bytes(body, config.max_json, config).await {
                Ok(bytes) => self.text(bytes, started).await,
                Err(response) => *response,
            },
            Endpoint::Health => json_response(StatusCode::OK, &json!({"status": "ok"})),
        }
    }

    /// AVP-HTTP-31: the header is checked as soon as its 12 bytes arrive, the
    /// declared length against the limit before anything is buffered, the
    /// metadata as soon as it is complete.
    async fn transmit(
        &self,
        body: Incoming,
        config: &ServerConfig,
        started: Instant,
    ) -> Response<ResponseBody> {
        let mut reader = LimitedReader::new(body, config.max_body, config.idle_timeout);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        if let Err(err) = reader.fill_to(&mut buf, HEADER_LEN).await {
            return read_error(err, config.max_body);
        }
        let header = match peek_header(&buf) {
            Ok(Some(header)) => header,
            Ok(None) => return truncated(buf.len() as u64, HEADER_LEN as u64),
            Err(err) => return wire_error(&err),
        };
        let total = header.message_len();
        if total > config.max_body {
            return too_large(config.max_body);
        }
        // Held until the message is stored: all buffers together stay within the budget.
        let wanted = budget_permits(total).min(self.budget_mib);
        let Ok(_budget) = Arc::clone(&self.budget).acquire_many_owned(wanted).await else {
            return internal("the memory budget is closed");
        };
        // Bounded by the limit just checked, not by what the client may send later.
        buf.reserve(
            usize::try_from(total)
                .unwrap_or(0)
                .saturating_sub(buf.len()),
        );
        let meta_end = header.metadata_end();
        if let Err(err) = reader.fill_to(&mut buf, meta_end).await {
            return read_error(err, config.max_body);
        }
        if buf.len() < meta_end {
            return truncated(buf.len() as u64, total);
        }
        let routing = match peek_routing(&buf) {
            Ok(routing) => routing,
            Err(err) => return wire_error(&err),
        };
        if let Err(err) = reader.read_to_end(&mut buf).await {
            return read_error(err, config.max_body);
        }
        if (buf.len() as u64) < total {
            return truncated(buf.len() as u64, total);
        }
        let bytes = buf.freeze();
        // Checksum, enums, decompression: CPU work off the async threads.
        let checked = {
            let bytes = bytes.clone();
            let key = self.mac_key.clone();
            tokio::task::spawn_blocking(move || check_complete_signed(&bytes, key.as_deref())).await
        };
        let warnings = match checked {
            Ok(Ok(warnings)) => warnings,
            Ok(Err(err)) => return wire_error(&err),
            Err(_) => return internal("the decode task failed"),
        };
        let context = StoredContext {
            id: new_id(),
            session_id: routing.session_id,
            source_agent_id: routing.source_agent_id,
            target_agent_id: routing.target_agent_id,
            len: 0,
            received_at: SystemTime::now(),
            path: None,
            text: false,
        };
        let stored = match self.put(context, bytes, "transmit", started).await {
            Ok(stored) => stored,
            Err(response) => return *response,
        };
        json_response(
            StatusCode::OK,
            &json!({
                "success": true,
                "request_id": stored.id,
                "agent_id": self.agent_id,
                "session_id": stored.session_id,
                "source_agent_id": stored.source_agent_id,
                "target_agent_id": stored.target_agent_id,
                "bytes": stored.len,
                "warnings": warnings,
            }),
        )
    }

    /// AVP-HTTP-33: a JSON fallback message (AVP-JSON form) is stored as sent.
    async fn text(&self, bytes: bytes::Bytes, started: Instant) -> Response<ResponseBody> {
        let value: Value = match serde_json::from_slice(&bytes) {
            Ok(value) => value,
            Err(err) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    &format!("body is not JSON: {err}"),
                );
            }
        };
        let Some(message) = value.as_object() else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_message",
                "the message must be a JSON object",
            );
        };
        for key in [
            "avp_version",
            "session_id",
            "source_agent_id",
            "target_agent_id",
            "content",
        ] {
            if message.get(key).is_some_and(|v| !v.is_string()) {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_message",
                    &format!("`{key}` must be a string"),
                );
            }
        }
        let field = |key: &str| {
            message
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let context = StoredContext {
            id: new_id(),
            session_id: field("session_id"),
            source_agent_id: field("source_agent_id"),
            target_agent_id: field("target_agent_id"),
            len: 0,
            received_at: SystemTime::now(),
            path: None,
            text: true,
        };
        match self.put(context, bytes, "text", started).await {
            Ok(stored) => json_response(
                StatusCode::OK,
                &json!({"success": true, "request_id": stored.id, "agent_id": self.agent_id}),
            ),
            Err(response) => *response,
        }
    }

    async fn put(
        &self,
        context: StoredContext,
        bytes: bytes::Bytes,
        endpoint: &'static str,
        started: Instant,
    ) -> Result<StoredContext, Box<Response<ResponseBody>>> {
        let store = Arc::clone(&self.store);
        let stored = match tokio::task::spawn_blocking(move || store.put(context, bytes)).await {
            Ok(Ok(stored)) => stored,
            // Our side failed (disk full, ...): a 5xx is honest here, the input was fine.
            Ok(Err(err)) => {
                return Err(Box::new(error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_failed",
                    &format!("could not store the message: {err}"),
                )));
            }
            Err(_) => {
                return Err(Box::new(error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the store task failed",
                )));
            }
        };
        if let Some(hook) = &self.hook {
            hook(&Received {
                context: stored.clone(),
                endpoint,
                elapsed: started.elapsed(),
            });
        }
        Ok(stored)
    }
}

/// Reads a whole body bounded by `limit`.
pub(crate) async fn read_bytes(
    body: Incoming,
    limit: u64,
    config: &ServerConfig,
) -> Result<bytes::Bytes, Box<Response<ResponseBody>>> {
    let mut reader = LimitedReader::new(body, limit, config.idle_timeout);
    let mut buf = BytesMut::new();
    match reader.read_to_end(&mut buf).await {
        Ok(()) => Ok(buf.freeze()),
        Err(err) => Err(Box::new(read_error(err, limit))),
    }
}

fn json_bytes_response(body: Vec<u8>) -> Response<ResponseBody> {
    let mut response = Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn read_error(err: ReadError, limit: u64) -> Response<ResponseBody> {
    match err {
        ReadError::TooLarge => too_large(limit),
        ReadError::Idle => error_response(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request body stalled",
        ),
        ReadError::Broken(why) => error_response(
            StatusCode::BAD_REQUEST,
            "truncated",
            &format!("the request body broke off: {why}"),
        ),
    }
}

/// Whole MiB needed for `bytes` (at least 1), as semaphore permits.
fn budget_permits(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(MIB).max(1)).unwrap_or(u32::MAX)
}

/// A codec error as an answer: its kind and message, 400 or 413 (AVP-HTTP-14).
pub(crate) fn wire_error(err: &WireError) -> Response<ResponseBody> {
    error_response(status_for(err), err.kind().as_str(), err.message())
}

fn internal(why: &str) -> Response<ResponseBody> {
    error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", why)
}

fn truncated(got: u64, want: u64) -> Response<ResponseBody> {
    error_response(
        StatusCode::BAD_REQUEST,
        "truncated",
        &format!("message truncated: the header declares {want} bytes, the body had {got}"),
    )
}

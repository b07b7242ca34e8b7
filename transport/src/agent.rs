//! An agent endpoint: receives messages, checks them as they stream in, and
//! keeps them in a [`ContextStore`] (AVP-HTTP-30..35).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use avp_handshake::ModelIdentity;
use avp_json::{self as py_json, Object};
use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::assembly::{Assemblies, AssemblyError, IncomingChunk, Origin, hex, parse_context_id};
use crate::body::{LimitedReader, ResponseBody, drain_later, error_response, json_response};
use crate::budget::{Budget, Held, PeerKey};
use crate::endpoint::{
    Endpoint, Handler, HandlerFuture, Peer, ServerConfig, read_bytes, read_error_draining,
    read_prefix, too_large, wire_error,
};
use crate::hello::{HandshakeServer, HelloProblem, SessionCheck};
use crate::kv_wire::{self, KvRefusal};
use crate::store::{ContextStore, StoredContext, new_id};
use crate::wire::{HEADER_LEN, RoutingInfo, check_chunk, header_status, routing_status};
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
    handshake: HandshakeServer,
    /// Transmits must claim a live session issued here (AVP-HTTP-35).
    require_session: bool,
    store: Arc<ContextStore>,
    hook: Option<ReceivedHook>,
    /// Bytes of message buffers all requests together may hold, taken as
    /// they arrive, at most a share per peer (AVP-HTTP-17).
    budget: Arc<Budget>,
    budget_total: u64,
    peer_share: Option<u64>,
    /// When set, transmits must carry a valid keyed MAC (AVP-MAC-7).
    mac_key: Option<Arc<MacKey>>,
    /// Assembles chunked contexts when set (AVP-HTTP-81); else the chunk
    /// endpoints answer 404.
    chunks: Option<Arc<Assemblies>>,
}

/// Default for [`Agent::with_memory_budget`]: 4 GiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 4 << 30;
const GIB: u64 = 1 << 30;

impl Agent {
    /// An agent with this id and model identity (ModelIdentity JSON form) that
    /// puts what it receives into `store`.
    pub fn new(
        agent_id: impl Into<String>,
        identity: ModelIdentity,
        store: Arc<ContextStore>,
    ) -> Self {
        let agent_id = agent_id.into();
        Self {
            handshake: HandshakeServer::new(agent_id.clone(), identity),
            require_session: false,
            agent_id,
            store,
            hook: None,
            budget: Arc::new(Budget::new(
                DEFAULT_MEMORY_BUDGET,
                default_share(DEFAULT_MEMORY_BUDGET),
            )),
            budget_total: DEFAULT_MEMORY_BUDGET,
            peer_share: None,
            mac_key: None,
            chunks: None,
        }
    }

    /// Assembles chunked contexts with `assemblies` (built on this agent's
    /// store; AVP-HTTP-81..86). Announce it in the handshake with
    /// [`HandshakeServer::with_kv_chunked`].
    pub fn with_chunk_assembly(mut self, assemblies: Arc<Assemblies>) -> Self {
        self.chunks = Some(assemblies);
        self
    }

    /// Requires every binary transmit to carry a valid keyed MAC made with
    /// `key` (spec/protocol/mac.md, AVP-MAC-7): unsigned or badly signed messages are
    /// refused with 400 and the error kind `bad_mac`, and nothing is stored.
    pub fn with_mac_key(mut self, key: MacKey) -> Self {
        self.mac_key = Some(Arc::new(key));
        self
    }

    /// Bounds the message bytes all requests together may buffer. Bytes are
    /// taken as they arrive; a request that finds the budget full stops
    /// reading (TCP pushes back) until bytes are given back or its deadline
    /// passes (AVP-HTTP-17, AVP-HTTP-18).
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.budget_total = bytes;
        self.rebuild_budget();
        self
    }

    /// Bytes of the budget one peer (its mTLS certificate, else its address)
    /// may hold at once (default: a quarter of the budget, at least 1 GiB
    /// when the budget allows). A message larger than this is refused with 413.
    pub fn with_peer_share(mut self, bytes: u64) -> Self {
        self.peer_share = Some(bytes);
        self.rebuild_budget();
        self
    }

    fn rebuild_budget(&mut self) {
        let share = self
            .peer_share
            .unwrap_or_else(|| default_share(self.budget_total));
        self.budget = Arc::new(Budget::new(self.budget_total, share));
    }

    /// Requests that hold budget and wait for more (for tests and metrics).
    pub fn budget_waiting(&self) -> usize {
        self.budget.waiting()
    }

    /// Budget bytes held now, in all and by `peer` (for tests and metrics).
    pub fn budget_in_use(&self, peer: std::net::IpAddr) -> (u64, u64) {
        self.budget.in_use(&PeerKey::Addr(peer))
    }

    /// Answers handshakes with this server side (weights digest, map files,
    /// session limits); its agent id should be this agent's.
    pub fn with_handshake(mut self, handshake: HandshakeServer) -> Self {
        self.handshake = handshake;
        self
    }

    /// Refuses transmits that do not claim a live session issued by this
    /// agent's handshake (409 `unknown_session`, AVP-HTTP-35). Off by
    /// default: the SDK's client may transmit without a handshake.
    pub fn require_session(mut self, required: bool) -> Self {
        self.require_session = required;
        self
    }

    /// The handshake side (sessions issued, identity).
    pub fn handshake(&self) -> &HandshakeServer {
        &self.handshake
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

    async fn answer(
        &self,
        endpoint: Endpoint,
        request: Request<Incoming>,
        config: &ServerConfig,
        peer: &Peer,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let body = request.into_body();
        // Under mTLS the credential, not the address, is the unit of the share.
        let key = match &peer.client_identity {
            Some(identity) => PeerKey::Cert(Arc::from(identity.as_str())),
            None => PeerKey::Addr(peer.ip),
        };
        let held = Held::new(Arc::clone(&self.budget), key);
        match endpoint {
            Endpoint::Transmit => self.transmit(body, config, started, held, peer).await,
            Endpoint::Chunk | Endpoint::ChunkStatus => {
                let Some(chunks) = &self.chunks else {
                    drain_later(body);
                    return error_response(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "this agent does not assemble chunked contexts (no kv_chunked)",
                    );
                };
                if endpoint == Endpoint::Chunk {
                    self.chunk(chunks, body, config, started, held, peer).await
                } else {
                    match read_bytes(body, config.max_json, config, Some(held)).await {
                        Ok(bytes) => chunk_status(chunks, &bytes).await,
                        Err(response) => *response,
                    }
                }
            }
            Endpoint::Handshake => {
                match read_bytes(body, config.max_json, config, Some(held)).await {
                    Ok(bytes) => match self.handshake.answer(&bytes) {
                        Ok(answer) => json_bytes_response(answer),
                        Err(HelloProblem::TooManySessions) => error_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "server_busy",
                            "too many live sessions; try again later",
                        ),
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
                }
            }
            Endpoint::Text => match read_bytes(body, config.max_json, config, Some(held)).await {
                Ok(bytes) => self.text(bytes, started, peer).await,
                Err(response) => *response,
            },
        }
    }

    /// Reads the header as soon as its 12 bytes arrive and checks the
    /// declared length against the body limit and the largest request the
    /// budget allows, before anything else is buffered (AVP-HTTP-31): the
    /// reader, positioned after what `buf` holds, and that length.
    async fn read_declared_len(
        &self,
        body: Incoming,
        config: &ServerConfig,
        started: Instant,
        held: Held,
        buf: &mut BytesMut,
    ) -> Result<(LimitedReader, u64), Response<ResponseBody>> {
        let reader = LimitedReader::new(body, config.max_body, config.pace(started.into()))
            .with_budget(held);
        let short = |held: usize| truncated(held as u64, HEADER_LEN as u64);
        let (reader, header) = read_prefix(reader, buf, header_status, config.max_body, short)
            .await
            .map_err(|answer| *answer)?;
        let total = header.message_len();
        // A message larger than one peer may ever hold could never complete.
        let limit = config.max_body.min(self.budget.largest_request());
        if total > limit {
            reader.drain_later();
            return Err(too_large(limit));
        }
        Ok((reader, total))
    }

    /// AVP-HTTP-31: the header is checked as soon as its 12 bytes arrive, the
    /// declared length against the limit before anything is buffered, the
    /// metadata as soon as it is complete.
    async fn transmit(
        &self,
        body: Incoming,
        config: &ServerConfig,
        started: Instant,
        held: Held,
        peer: &Peer,
    ) -> Response<ResponseBody> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let (reader, total) = match self
            .read_declared_len(body, config, started, held, &mut buf)
            .await
        {
            Ok(read) => read,
            Err(answer) => return answer,
        };
        // Nothing is reserved from the declared size: the reader takes budget
        // for bytes as they arrive and the buffer grows with them.
        let short = |held: usize| truncated(held as u64, total);
        let (mut reader, routing) =
            match read_prefix(reader, &mut buf, routing_status, config.max_body, short).await {
                Ok(read) => read,
                Err(answer) => return *answer,
            };
        let session = match self
            .handshake
            .check_session(&routing.session_id, routing.mode)
        {
            SessionCheck::ModeMismatch { session, message } => {
                reader.drain_later();
                return error_response(
                    StatusCode::CONFLICT,
                    "session_mode_mismatch",
                    &format!(
                        "session {:?} negotiated {session}; this message is {message}",
                        routing.session_id
                    ),
                );
            }
            SessionCheck::Unknown | SessionCheck::None if self.require_session => {
                reader.drain_later();
                return error_response(
                    StatusCode::CONFLICT,
                    "unknown_session",
                    "this agent requires a live session from /avp/v2/handshake",
                );
            }
            SessionCheck::Unknown => "unknown",
            SessionCheck::Live => "live",
            _ => "none",
        };
        if let Err(err) = reader.read_to_end(&mut buf).await {
            return read_error_draining(reader, err, config.max_body);
        }
        if (buf.len() as u64) < total {
            return truncated(buf.len() as u64, total);
        }
        let bytes = buf.freeze();
        // Checksum, enums, decompression, and for compact contexts
        // dequantizing and assembly (AVP-HTTP-100/81): CPU work off the async threads.
        let checked = {
            let key = self.mac_key.clone();
            let caps = self.handshake.kv_capabilities();
            let store = Arc::clone(&self.store);
            let limit = config.max_body;
            tokio::task::spawn_blocking(move || {
                kv_wire::accept(bytes, key.as_deref(), caps, &store, limit)
            })
            .await
        };
        let accepted = match checked {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(refusal)) => return kv_refused(&refusal),
            Err(_) => return internal("the decode task failed"),
        };
        let (bytes, warnings, ext) = (accepted.bytes, accepted.warnings, accepted.ext);
        let context = StoredContext {
            id: new_id(),
            session_id: routing.session_id,
            source_agent_id: routing.source_agent_id,
            target_agent_id: routing.target_agent_id,
            client_identity: peer.client_identity.clone(),
            len: 0,
            received_at: SystemTime::now(),
            path: None,
            text: false,
            kv_prefix: accepted.kv_prefix,
            kv_boundary: accepted.kv_boundary,
        };
        let stored = match self.put(context, bytes, "transmit", started).await {
            Ok(stored) => stored,
            Err(response) => return *response,
        };
        let mut answer = Object::new()
            .with("success", true)
            .with("request_id", stored.id)
            .with("agent_id", self.agent_id.as_str())
            .with("session_id", stored.session_id)
            .with("source_agent_id", stored.source_agent_id)
            .with("target_agent_id", stored.target_agent_id)
            .with("bytes", stored.len)
            .with(
                "warnings",
                warnings
                    .into_iter()
                    .map(py_json::Value::from)
                    .collect::<Vec<_>>(),
            )
            .with("session", session);
        if let Some(ext) = ext {
            answer = answer.with(
                "kv_ext",
                Object::new()
                    .with("scheme", ext.scheme)
                    .with("seq_start", u64::from(ext.seq_start))
                    .with("seq_len", u64::from(ext.seq_len))
                    .with("received_bytes", ext.received),
            );
        }
        json_response(StatusCode::OK, &answer.into())
    }

    /// AVP-HTTP-33: a JSON fallback message is checked with the codec's
    /// parser (AVP-JSON-3: known members typed, `extra` an object, nesting
    /// within AVP-LIM-7) and stored as sent.
    async fn text(
        &self,
        bytes: bytes::Bytes,
        started: Instant,
        peer: &Peer,
    ) -> Response<ResponseBody> {
        // Plain JSON first, so "not JSON at all" keeps its own kind. Python's
        // grammar, not strict JSON: the SDK's json.dumps writes NaN and
        // Infinity, and json.loads reads 1e400 (issue 15).
        if let Err(err) = py_json::parse(&bytes) {
            // Too deep is AVP-LIM-7's limit_exceeded, found below.
            if err.kind != py_json::JsonErrorKind::TooDeep {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    &format!("body is not JSON: {err}"),
                );
            }
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return error_response(StatusCode::BAD_REQUEST, "invalid_json", "body is not UTF-8");
        };
        let message = match avp_codec::json::JsonMessage::from_json(text) {
            Ok(message) => message,
            Err(err) if err.kind() == avp_codec::ErrorKind::LimitExceeded => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "limit_exceeded",
                    err.message(),
                );
            }
            Err(err) => {
                return error_response(StatusCode::BAD_REQUEST, "invalid_message", err.message());
            }
        };
        let context = StoredContext {
            id: new_id(),
            session_id: message.session_id,
            source_agent_id: message.source_agent_id,
            target_agent_id: message.target_agent_id,
            client_identity: peer.client_identity.clone(),
            len: 0,
            received_at: SystemTime::now(),
            path: None,
            text: true,
            kv_prefix: None,
            kv_boundary: None,
        };
        match self.put(context, bytes, "text", started).await {
            Ok(stored) => json_response(
                StatusCode::OK,
                &Object::new()
                    .with("success", true)
                    .with("request_id", stored.id)
                    .with("agent_id", self.agent_id.as_str())
                    .into(),
            ),
            Err(response) => *response,
        }
    }

    /// AVP-HTTP-81/82: a chunk is read and checked like a transmit, then
    /// appended to its context's assembly on disk; the answer comes once it
    /// is durable (and, for the last chunk, once the context is stored).
    async fn chunk(
        &self,
        chunks: &Arc<Assemblies>,
        body: Incoming,
        config: &ServerConfig,
        started: Instant,
        held: Held,
        peer: &Peer,
    ) -> Response<ResponseBody> {
        let mut buf = chunks.spare_buffer();
        let (reader, total) = match self
            .read_declared_len(body, config, started, held, &mut buf)
            .await
        {
            Ok(read) => read,
            Err(answer) => return answer,
        };
        // Address space only: pages are touched (and budget taken) as bytes
        // arrive, and the buffer never doubles past the chunk (RSS bound):
        // a spare buffer too small is replaced, not grown.
        let want = usize::try_from(total).unwrap_or(0);
        if buf.capacity() < want {
            let mut exact = BytesMut::with_capacity(want);
            exact.extend_from_slice(&buf);
            buf = exact;
        }
        let short = |held: usize| truncated(held as u64, total);
        let (mut reader, routing) =
            match read_prefix(reader, &mut buf, routing_status, config.max_body, short).await {
                Ok(read) => read,
                Err(answer) => return *answer,
            };
        // Sessions apply to chunks as to transmits (AVP-HTTP-35).
        if let Some(refusal) = self.session_refusal(&routing) {
            reader.drain_later();
            return refusal;
        }
        if let Err(err) = reader.read_to_end(&mut buf).await {
            return read_error_draining(reader, err, config.max_body);
        }
        if (buf.len() as u64) < total {
            return truncated(buf.len() as u64, total);
        }
        let bytes = buf.freeze();
        let origin = Origin {
            session_id: routing.session_id,
            source_agent_id: routing.source_agent_id,
            target_agent_id: routing.target_agent_id,
            client_identity: peer.client_identity.clone(),
        };
        let key = self.mac_key.clone();
        let assemblies = Arc::clone(chunks);
        // Checksum, digest and disk: off the async threads.
        let outcome = tokio::task::spawn_blocking(move || {
            let (info, layers_at) = match check_chunk(&bytes, key.as_deref()) {
                Ok(Some(found)) => found,
                Ok(None) => return Err(ChunkRefusal::NotAChunk),
                Err(err) => return Err(ChunkRefusal::Wire(err)),
            };
            assemblies
                .add(IncomingChunk {
                    bytes,
                    info,
                    layers_at,
                    origin,
                })
                .map_err(ChunkRefusal::Assembly)
        })
        .await;
        let added = match outcome {
            Ok(Ok(added)) => added,
            Ok(Err(refusal)) => return refusal.answer(),
            Err(_) => return internal("the chunk task failed"),
        };
        if let (Some(stored), Some(hook)) = (&added.stored, &self.hook) {
            hook(&Received {
                context: stored.clone(),
                endpoint: "chunked",
                elapsed: started.elapsed(),
            });
        }
        let request_id = added
            .request_id
            .map_or(py_json::Value::Null, py_json::Value::from);
        json_response(
            StatusCode::OK,
            &Object::new()
                .with("success", true)
                .with("agent_id", self.agent_id.as_str())
                .with("context_id", added.context_id)
                .with("index", u64::from(added.index))
                .with("count", u64::from(added.count))
                .with("held", u64::from(added.held))
                .with("duplicate", added.duplicate)
                .with("complete", !request_id.is_null())
                .with("request_id", request_id)
                .into(),
        )
    }

    /// The answer refusing a message whose session does not pass
    /// AVP-HTTP-35 (mode mismatch; no live session when one is required).
    fn session_refusal(&self, routing: &RoutingInfo) -> Option<Response<ResponseBody>> {
        match self
            .handshake
            .check_session(&routing.session_id, routing.mode)
        {
            SessionCheck::ModeMismatch { session, message } => Some(error_response(
                StatusCode::CONFLICT,
                "session_mode_mismatch",
                &format!(
                    "session {:?} negotiated {session}; this message is {message}",
                    routing.session_id
                ),
            )),
            SessionCheck::Unknown | SessionCheck::None if self.require_session => {
                Some(error_response(
                    StatusCode::CONFLICT,
                    "unknown_session",
                    "this agent requires a live session from /avp/v2/handshake",
                ))
            }
            _ => None,
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

impl Handler for Agent {
    fn handle<'a>(
        &'a self,
        endpoint: Endpoint,
        request: Request<Incoming>,
        config: &'a ServerConfig,
        peer: &'a Peer,
    ) -> HandlerFuture<'a> {
        Box::pin(self.answer(endpoint, request, config, peer))
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

/// A quarter of the budget, but at least 1 GiB (the default body limit) when
/// the budget has it, so one peer's default-sized message always fits.
fn default_share(total: u64) -> u64 {
    (total / 4).max(GIB.min(total))
}

/// Why a chunk was refused, as its answer (AVP-HTTP-85).
enum ChunkRefusal {
    NotAChunk,
    Wire(crate::wire::WireError),
    Assembly(AssemblyError),
}

impl ChunkRefusal {
    fn answer(self) -> Response<ResponseBody> {
        match self {
            Self::NotAChunk => error_response(
                StatusCode::BAD_REQUEST,
                "bad_chunk",
                "the message has no avp.chunk descriptor, or is compressed (chunks never are)",
            ),
            Self::Wire(err) | Self::Assembly(AssemblyError::Invalid(err)) => wire_error(&err),
            Self::Assembly(AssemblyError::Digest(err)) => wire_error(&err),
            Self::Assembly(AssemblyError::Busy(why)) => {
                let mut response =
                    error_response(StatusCode::SERVICE_UNAVAILABLE, "server_busy", &why);
                response.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("5"),
                );
                response
            }
            Self::Assembly(err) => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_failed",
                &err.to_string(),
            ),
        }
    }
}

/// AVP-HTTP-83: `{"context_id", "target_agent_id"}` → what is held.
async fn chunk_status(chunks: &Arc<Assemblies>, body: &[u8]) -> Response<ResponseBody> {
    let query = match py_json::parse(body) {
        Ok(query) => query,
        Err(err) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                &format!("body is not JSON: {err}"),
            );
        }
    };
    let given = query.get("context_id").and_then(py_json::Value::as_str);
    let Some(context_id) = given.and_then(parse_context_id) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "context_id must be 32 lowercase hex digits",
        );
    };
    let assemblies = Arc::clone(chunks);
    let Ok(status) = tokio::task::spawn_blocking(move || assemblies.status(&context_id)).await
    else {
        return internal("the status task failed");
    };
    let count = status
        .count
        .map_or(py_json::Value::Null, |n| py_json::Value::from(u64::from(n)));
    let complete = status.request_id.is_some();
    let request_id = status
        .request_id
        .map_or(py_json::Value::Null, py_json::Value::from);
    json_response(
        StatusCode::OK,
        &Object::new()
            .with("success", true)
            .with("context_id", hex(&context_id))
            .with("count", count)
            .with(
                "held",
                status
                    .held
                    .into_iter()
                    .map(|i| py_json::Value::from(u64::from(i)))
                    .collect::<Vec<_>>(),
            )
            .with("complete", complete)
            .with("request_id", request_id)
            .into(),
    )
}

fn internal(why: &str) -> Response<ResponseBody> {
    error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", why)
}

/// The answer for a transmit refused by the compact-context checks
/// (AVP-HTTP-100/81): a delta without a usable base is 409, so the sender
/// knows to send the full context; everything else the peer sent is 4xx.
fn kv_refused(refusal: &KvRefusal) -> Response<ResponseBody> {
    match refusal {
        KvRefusal::NotAnnounced(capability) => error_response(
            StatusCode::BAD_REQUEST,
            "capability_not_announced",
            &format!(
                "this agent did not announce {capability}; send a plain KV_CACHE message (AVP-KVQ-1)"
            ),
        ),
        KvRefusal::TooLarge { bytes, limit } => error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit_exceeded",
            &format!("the expanded context would be {bytes} bytes, over the limit of {limit}"),
        ),
        KvRefusal::Wire(err)
            if matches!(
                err.kind(),
                avp_codec::ErrorKind::MissingPrefix | avp_codec::ErrorKind::PrefixMismatch
            ) =>
        {
            error_response(StatusCode::CONFLICT, err.kind().as_str(), err.message())
        }
        KvRefusal::Wire(err) => wire_error(err),
        KvRefusal::Store(err) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_failed",
            &format!("could not read the stored base: {err}"),
        ),
        KvRefusal::Internal(why) => internal(why),
    }
}

fn truncated(got: u64, want: u64) -> Response<ResponseBody> {
    error_response(
        StatusCode::BAD_REQUEST,
        "truncated",
        &format!("message truncated: the header declares {want} bytes, the body had {got}"),
    )
}

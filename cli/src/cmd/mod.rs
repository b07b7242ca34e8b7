//! One module per subcommand. The engine commands' modules (think, generate,
//! project, engine_common) belong to the `avp-engine` binary (engine_main.rs).
pub(crate) mod address;
pub(crate) mod address_cmd;
pub(crate) mod chunk_files;
pub(crate) mod conformance;
pub(crate) mod convert;
pub(crate) mod decode;
pub(crate) mod encode;
pub(crate) mod engine_exec;
pub(crate) mod handshake;
pub(crate) mod handshake_remote;
pub(crate) mod hash;
pub(crate) mod identity;
pub(crate) mod inspect;
pub(crate) mod kv;
pub(crate) mod kv_file;
pub(crate) mod kv_send;
pub(crate) mod model_dir;
pub(crate) mod route;
pub(crate) mod send;
pub(crate) mod send_chunked;
pub(crate) mod serve;
pub(crate) mod store;
pub(crate) mod stream_in;
pub(crate) mod version;

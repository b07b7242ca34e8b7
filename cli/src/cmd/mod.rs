//! One module per subcommand.
pub(crate) mod conformance;
pub(crate) mod decode;
pub(crate) mod encode;
pub(crate) mod handshake;
pub(crate) mod handshake_remote;
pub(crate) mod hash;
pub(crate) mod identity;
pub(crate) mod inspect;
pub(crate) mod route;
pub(crate) mod send;
pub(crate) mod serve;
pub(crate) mod version;

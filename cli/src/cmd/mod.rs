//! One module per subcommand.
pub(crate) mod handshake;
pub(crate) mod hash;
pub(crate) mod identity;
pub(crate) mod version;

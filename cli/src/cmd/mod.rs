//! One module per subcommand.
pub(crate) mod conformance;
pub(crate) mod decode;
pub(crate) mod encode;
pub(crate) mod inspect;
pub(crate) mod version;

//! One module per subcommand.
pub(crate) mod conformance;
pub(crate) mod version;

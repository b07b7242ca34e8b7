//! One module per subcommand.
#[cfg(feature = "engine")]
pub(crate) mod engine_common;
#[cfg(feature = "engine")]
pub(crate) mod generate;
#[cfg(feature = "engine")]
pub(crate) mod project;
#[cfg(feature = "engine")]
pub(crate) mod think;
pub(crate) mod version;

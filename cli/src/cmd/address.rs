//! `--session`, `--source-agent`, `--target-agent`: addressing a message the
//! command writes (`encode`, `think`, `project`), so that `avp route` can
//! forward it by `target_agent_id` without another tool in between. Not
//! `--source`/`--target`: on `project` those name the two models.

use avp_codec::{Compression, Error, decode, encode};
use clap::Args;

/// The three routing fields of the metadata (spec/protocol/wire.md).
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct AddressArgs {
    /// session_id to write.
    #[arg(long, value_name = "ID")]
    pub(crate) session: Option<String>,
    /// source_agent_id to write (this agent).
    #[arg(long = "source-agent", value_name = "ID")]
    pub(crate) source_agent: Option<String>,
    /// target_agent_id to write (the agent `avp route` forwards it to).
    #[arg(long = "target-agent", value_name = "ID")]
    pub(crate) target_agent: Option<String>,
}

impl AddressArgs {
    /// Whether any field was given.
    pub(crate) fn any(&self) -> bool {
        self.session.is_some() || self.source_agent.is_some() || self.target_agent.is_some()
    }

    /// Sets the given fields in `meta`.
    pub(crate) fn apply(&self, meta: &mut avp_codec::Metadata<'_>) {
        if let Some(s) = &self.session {
            meta.session_id = s.clone().into();
        }
        if let Some(s) = &self.source_agent {
            meta.source_agent_id = s.clone().into();
        }
        if let Some(s) = &self.target_agent {
            meta.target_agent_id = s.clone().into();
        }
    }

    /// `message` with the given fields set, re-encoded (a compressed tensor
    /// at the balanced zstd level); unchanged (the engine's bytes,
    /// byte-identical to the SDK's) when none is given.
    pub(crate) fn readdress(&self, message: Vec<u8>) -> Result<Vec<u8>, Error> {
        if !self.any() {
            return Ok(message);
        }
        let msg = decode(&message)?;
        let mut meta = msg.metadata.clone();
        self.apply(&mut meta);
        // The encoder derives it from `compression` below (a stale one is refused).
        meta.compression = None;
        let compression = if msg.was_compressed() {
            Compression::Balanced
        } else {
            Compression::None
        };
        encode(&meta, &msg.payload, compression)
    }
}

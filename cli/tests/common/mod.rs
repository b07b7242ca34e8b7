//! Helpers shared by the CLI integration tests: the built binary, scratch
//! directories, and servers that announce `listening on URL`.
#![allow(dead_code, clippy::expect_used)] // each test crate uses a subset

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The workspace root.
pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `avp` binary under test.
pub(crate) fn avp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_avp"))
}

/// A fresh scratch directory under the system temp dir, removed on drop.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    /// A new empty directory whose name carries `area` and `tag`.
    pub(crate) fn new(area: &str, tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("avp-{area}-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    /// A path inside the directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server process that printed `listening on URL`; killed when dropped.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `command` with stdout piped and waits (30 s at most) for its
/// `listening on URL` line.
pub(crate) fn start(mut command: Command) -> Running {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server announced its address");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("announcement")
        .to_owned();
    Running { child, url }
}

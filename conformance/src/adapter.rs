//! Drives an external implementation through the JSON-lines adapter protocol
//! (spec/protocol/conformance.md, AVP-CONF-20..26).
//!
//! One request in flight; a reader thread turns stdout into lines so a hung
//! adapter times out instead of hanging the run; stderr is collected by a
//! second thread and attached to the case it was written during. A crash or
//! timeout is an ERROR for that case only: the adapter is restarted (and
//! greeted again) for the next one.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::ConformanceError;
use crate::subject::{HarnessFailure, Request, Subject};

/// Version of the adapter protocol this runner speaks (AVP-CONF-21).
pub const PROTOCOL_VERSION: u64 = 1;
/// Byte inputs larger than this travel as files (AVP-CONF-24).
pub const INLINE_LIMIT: usize = 1 << 20;
/// Keep at most this much stderr per case.
const LOG_LIMIT: usize = 64 * 1024;

/// The four outcomes an answer may carry (AVP-CONF-22).
pub const OUTCOMES: [&str; 4] = ["accepted", "rejected", "skipped", "errored"];

/// Control commands of the protocol; no case op may be spelled like one
/// (the corpus loader refuses such a case, AVP-CONF-22), so a case request's
/// `cmd` is its op.
pub const CONTROL_COMMANDS: [&str; 2] = ["hello", "stop"];

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<std::io::Result<String>>,
}

/// An implementation behind an adapter program.
pub struct AdapterSubject {
    argv: Vec<String>,
    timeout: Duration,
    running: Option<Running>,
    log: Arc<Mutex<Vec<u8>>>,
    seq: u64,
    tmp_dir: PathBuf,
    hello: Option<Value>,
    restarts: u32,
}

impl AdapterSubject {
    /// `command` is split like a shell would (spaces, single and double quotes).
    pub fn new(command: &str, timeout: Duration) -> Result<Self, ConformanceError> {
        let argv = split_command(command)?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp_dir = std::env::temp_dir().join(format!(
            "avp-conformance-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&tmp_dir).map_err(|e| ConformanceError::io(&tmp_dir, e))?;
        Ok(AdapterSubject {
            argv,
            timeout,
            running: None,
            log: Arc::default(),
            seq: 0,
            tmp_dir,
            hello: None,
            restarts: 0,
        })
    }

    /// How many times the adapter had to be restarted after a crash or timeout.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    fn spawn(&mut self) -> Result<(), ConformanceError> {
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| ConformanceError::Usage("empty adapter command".into()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ConformanceError::Subject(format!("cannot start {program}: {e}")))?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(ConformanceError::Subject(
                "adapter pipes unavailable".into(),
            ));
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        if tx.send(Ok(line)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut log) = log.lock() {
                    log.extend_from_slice(&buf[..n]);
                    if log.len() > LOG_LIMIT {
                        let cut = log.len() - LOG_LIMIT;
                        log.drain(..cut);
                    }
                }
            }
        });
        self.running = Some(Running {
            child,
            stdin,
            lines: rx,
        });
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }

    /// Sends one line and waits for one answer line with the same `seq`.
    fn exchange(&mut self, message: Value) -> Result<Value, HarnessFailure> {
        self.exchange_with_input(message, None)
    }

    /// Like `exchange`, with `"input": <raw_input>` spliced in verbatim so
    /// numbers reach the adapter exactly as the corpus wrote them.
    fn exchange_with_input(
        &mut self,
        mut message: Value,
        raw_input: Option<&str>,
    ) -> Result<Value, HarnessFailure> {
        self.seq += 1;
        let seq = self.seq;
        message["seq"] = json!(seq);
        let timeout = self.timeout;
        let Some(running) = self.running.as_mut() else {
            return Err(HarnessFailure::Crashed("adapter not running".into()));
        };
        let mut line = message.to_string();
        if let Some(raw) = raw_input {
            // Raw newlines can only be insignificant whitespace in valid JSON
            // (strings escape them), so flattening keeps the value intact.
            line.pop();
            line.push_str(",\"input\":");
            line.extend(
                raw.chars()
                    .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
            );
            line.push('}');
        }
        line.push('\n');
        if let Err(e) = running
            .stdin
            .write_all(line.as_bytes())
            .and_then(|()| running.stdin.flush())
        {
            let status = running
                .child
                .try_wait()
                .ok()
                .flatten()
                .map(|s| s.to_string())
                .unwrap_or_default();
            self.kill();
            return Err(HarnessFailure::Crashed(format!(
                "writing request: {e} {status}"
            )));
        }
        let answer = match running.lines.recv_timeout(timeout) {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => {
                self.kill();
                return Err(HarnessFailure::Crashed(format!("reading stdout: {e}")));
            }
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                return Err(HarnessFailure::Timeout(timeout));
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = running
                    .child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                self.running = None;
                return Err(HarnessFailure::Crashed(format!(
                    "adapter exited ({status})"
                )));
            }
        };
        let value: Value = serde_json::from_str(answer.trim_end()).map_err(|e| {
            HarnessFailure::Protocol(format!(
                "answer is not JSON ({e}): {}",
                truncate(&answer, 200)
            ))
        })?;
        if !value.is_object() {
            return Err(HarnessFailure::Protocol(
                "answer is not a JSON object".into(),
            ));
        }
        if value.get("seq").and_then(Value::as_u64) != Some(seq) {
            // Answers are now out of step with requests: start over.
            self.kill();
            return Err(HarnessFailure::Protocol(format!(
                "answer has seq {}, expected {seq}",
                value.get("seq").unwrap_or(&Value::Null)
            )));
        }
        Ok(value)
    }

    fn ensure_started(&mut self) -> Result<(), ConformanceError> {
        if self.running.is_some() {
            return Ok(());
        }
        if self.hello.is_some() {
            self.restarts += 1;
        }
        self.spawn()?;
        let hello = json!({
            "cmd": "hello",
            "protocol": PROTOCOL_VERSION,
            "tmp_dir": self.tmp_dir.display().to_string(),
        });
        let answer = self
            .exchange(hello)
            .map_err(|e| ConformanceError::Subject(format!("hello: {e}")))?;
        let protocol = answer.get("protocol").and_then(Value::as_u64);
        if protocol != Some(PROTOCOL_VERSION) {
            self.kill();
            return Err(ConformanceError::Subject(format!(
                "adapter speaks protocol {protocol:?}, runner speaks {PROTOCOL_VERSION}"
            )));
        }
        self.hello = Some(answer);
        Ok(())
    }

    fn data_ref(&self, case_id: &str, data: &[u8]) -> Result<Value, HarnessFailure> {
        if data.len() <= INLINE_LIMIT {
            return Ok(json!({ "b64": crate::b64::encode(data) }));
        }
        let name: String = case_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = self.tmp_dir.join(format!("{name}.in"));
        std::fs::write(&path, data).map_err(|e| {
            HarnessFailure::Crashed(format!("cannot write {}: {e}", path.display()))
        })?;
        Ok(json!({ "path": path.display().to_string() }))
    }
}

impl Subject for AdapterSubject {
    fn hello(&mut self) -> Result<Value, ConformanceError> {
        self.ensure_started()?;
        self.hello
            .clone()
            .ok_or_else(|| ConformanceError::Subject("no hello".into()))
    }

    fn call(&mut self, request: &Request<'_>) -> Result<Value, HarnessFailure> {
        self.ensure_started()
            .map_err(|e| HarnessFailure::Crashed(format!("restart failed: {e}")))?;
        let answer = match request.data {
            Some(data) => {
                let mut input = match request.input {
                    Value::Object(map) => map.clone(),
                    _ => serde_json::Map::new(),
                };
                for key in ["file", "path", "bin", "b64", "hex"] {
                    input.remove(key);
                }
                input.insert("data".into(), self.data_ref(request.case_id, data)?);
                self.exchange(
                    json!({ "cmd": request.cmd, "case": request.case_id, "input": input }),
                )?
            }
            None => self.exchange_with_input(
                json!({ "cmd": request.cmd, "case": request.case_id }),
                Some(request.input_raw),
            )?,
        };
        match answer.get("outcome").and_then(Value::as_str) {
            Some(o) if OUTCOMES.contains(&o) => Ok(answer),
            _ => Err(HarnessFailure::Protocol(format!(
                "answer without a known outcome: {}",
                truncate(&answer.to_string(), 200)
            ))),
        }
    }

    fn take_log(&mut self) -> String {
        // What the adapter wrote to stderr just before answering may still be
        // in the pipe and land with the next case; waiting for it would cost
        // every case a sleep. Lines always arrive whole, in order.
        match self.log.lock() {
            Ok(mut log) => {
                let text = String::from_utf8_lossy(&log).into_owned();
                log.clear();
                text
            }
            Err(_) => String::new(),
        }
    }

    fn finish(&mut self) {
        if self.running.is_some() && self.exchange(json!({ "cmd": "stop" })).is_ok() {
            if let Some(mut r) = self.running.take() {
                drop(r.stdin);
                let _ = r.child.wait();
            }
        }
        self.kill();
    }
}

impl Drop for AdapterSubject {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.tmp_dir);
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Splits an adapter command line: whitespace separates words; single quotes
/// keep everything literally, double quotes allow `\"` and `\\`.
pub fn split_command(command: &str) -> Result<Vec<String>, ConformanceError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => {
                            return Err(ConformanceError::Usage(
                                "unterminated ' in adapter command".into(),
                            ));
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => {
                                return Err(ConformanceError::Usage(
                                    "unterminated \" in adapter command".into(),
                                ));
                            }
                        },
                        Some(c) => word.push(c),
                        None => {
                            return Err(ConformanceError::Usage(
                                "unterminated \" in adapter command".into(),
                            ));
                        }
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err(ConformanceError::Usage("empty adapter command".into()));
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_splitting_handles_quotes() {
        assert_eq!(
            split_command("python3 a.py --x").unwrap(),
            ["python3", "a.py", "--x"]
        );
        assert_eq!(
            split_command("sh -c 'echo  hi' \"a \\\"b\\\"\"").unwrap(),
            ["sh", "-c", "echo  hi", "a \"b\""]
        );
        assert!(split_command("  ").is_err());
        assert!(split_command("x 'open").is_err());
    }
}

//! JSON fallback messages with the numbers Python's `json` writes and reads
//! but strict JSON forbids (`NaN`, `Infinity`, `-Infinity`, and `1e400`,
//! which `json.loads` reads as inf), sent by the SDK's own `AVPClient`
//! (avp==0.6.2) to `avp serve` directly and through `avp route`: accepted
//! end to end, stored byte for byte, and read back by Python as the value
//! that was sent (AVP-HTTP-33, AVP-JSON-6; issue 15).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;
use common::{Scratch, avp, start, workspace};

fn python() -> PathBuf {
    workspace().join(".venv/bin/python")
}

/// Sends one message per case with `AVPClient.send_text` and prints, per
/// case, the exact body sent, the HTTP status, the answer, and Python's
/// reading of the `score` the agent stored (the store's `<id>.json`).
/// `1e400` cannot come out of `json.dumps` (it writes `Infinity`), so that
/// case overrides `to_json` to put the literal in the SDK's own body.
const SENDER: &str = r#"
import json, math, os, sys
from avp.fallback import JSONMessage
from avp.transport import AVPClient

url, store = sys.argv[1], sys.argv[2]

class Literal(JSONMessage):
    def to_json(self):
        return json.dumps(self.to_dict()).replace('"__LIT__"', '1e400')

client = AVPClient(url, agent_id="py-agent", timeout=30.0)
cases = [("nan", JSONMessage, float("nan")), ("inf", JSONMessage, float("inf")),
         ("-inf", JSONMessage, float("-inf")), ("1e400", Literal, "__LIT__")]
for name, cls, score in cases:
    message = cls(session_id="s", source_agent_id="py-agent", target_agent_id="bob",
                  content="hi", extra={"score": score})
    response = client.send_text(message)
    answer = response.json()
    with open(os.path.join(store, answer["request_id"] + ".json"), "rb") as f:
        stored = f.read()
    print(json.dumps({"case": name, "sent": message.to_json(), "status": response.status_code,
                      "answer": answer, "stored": stored.decode(),
                      "stored_score": repr(json.loads(stored)["extra"]["score"])}), flush=True)
client.close()
"#;

fn send_all(url: &str, store: &std::path::Path) -> Vec<Value> {
    let output = Command::new(python())
        .args(["-c", SENDER, url, store.to_str().expect("utf-8")])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "the SDK client failed against {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect()
}

fn check(lines: &[Value], via: &str) {
    let expected = [
        ("nan", "nan", r#""score": NaN"#),
        ("inf", "inf", r#""score": Infinity"#),
        ("-inf", "-inf", r#""score": -Infinity"#),
        ("1e400", "inf", r#""score": 1e400"#),
    ];
    assert_eq!(lines.len(), expected.len(), "{via}: {lines:?}");
    for (line, (case, score, literal)) in lines.iter().zip(expected) {
        assert_eq!(line["case"], case);
        assert_eq!(line["status"], 200, "{via} {case}: {line}");
        assert_eq!(line["answer"]["success"], true, "{via} {case}: {line}");
        let sent = line["sent"].as_str().expect("sent");
        assert!(sent.contains(literal), "{via} {case}: sent {sent}");
        // The agent keeps the message as sent, and Python reads back the
        // number it meant (1e400 overflows to inf, as json.loads does).
        assert_eq!(line["stored"], line["sent"], "{via} {case}: stored as sent");
        assert_eq!(line["stored_score"], score, "{via} {case}");
    }
}

#[test]
fn http_33_sdk_text_with_nan_and_infinities_is_accepted_directly_and_through_the_router() {
    let scratch = Scratch::new("transport", "nonfinite");
    let store = scratch.path("store");
    let mut serve = avp();
    serve
        .args(["serve", "--listen", "127.0.0.1:0", "--quiet", "--store"])
        .arg(&store)
        .stderr(Stdio::null());
    let agent = start(serve);
    let mut route = avp();
    route
        .args(["route", "--listen", "127.0.0.1:0", "--route"])
        .arg(format!("bob={}", agent.url))
        .stderr(Stdio::null());
    let router = start(route);

    check(&send_all(&agent.url, &store), "avp serve");
    check(&send_all(&router.url, &store), "avp route -> avp serve");
}

//! Load generator for the HTTP binding with both ends in Rust: an in-process
//! agent with a disk store, and N clients (one connection each) sending M
//! unique messages of S MiB. Every acknowledged message is compared with its
//! stored file. Prints lost/corrupted counts, p50/p99/max latency and
//! throughput. A benchmark, not a test: results go to BENCHMARKS.md.
//!
//! With a 6th argument `H > 0`, H hostile connections from 127.0.0.2 run for the
//! whole time (AVP-HTTP-17/18): a third stall after the request head, a third
//! trickle one byte every 500 ms, a third declare a ~1 GiB message in its
//! 12-byte header and stall; each reconnects as soon as the server drops it.
//! The peak RSS of the process (server and clients) is printed at the end.
//!
//! cargo run --release -p avp-transport --example load -- [messages] [size_mib] [connections] [h1|h2] [disk|mem] [hostile]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use avp_codec::{Compression, Metadata, encode};
use avp_transport::{
    Agent, AvpClient, ClientConfig, ContextStore, ModelIdentity, Server, ServerConfig,
};
use bytes::Bytes;

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn message(index: usize, base: &[u8]) -> Vec<u8> {
    let mut tensor = base.to_vec();
    tensor[..8].copy_from_slice(&(index as u64).to_le_bytes());
    let session = format!("load-{index}");
    let metadata = Metadata::new()
        .with_session_id(session.as_str())
        .with_source_agent_id("load")
        .with_target_agent_id("agent")
        .with_tensor_shape(vec![1, (tensor.len() / 4) as u32]);
    encode(&metadata, &tensor, Compression::None).expect("encodable")
}

#[tokio::main]
async fn main() {
    let (messages, size_mib, connections) = (arg(1, 2000), arg(2, 1), arg(3, 16));
    let http2 = std::env::args().nth(4).is_some_and(|a| a == "h2");
    let dir = std::env::temp_dir().join(format!("avp-load-{}", std::process::id()));
    // "mem" as 5th argument: in-memory store (no fsync), to separate disk from HTTP costs.
    let in_memory = std::env::args().nth(5).is_some_and(|a| a == "mem");
    let store = Arc::new(if in_memory {
        ContextStore::in_memory(Duration::from_secs(3600))
    } else {
        ContextStore::open(&dir, Duration::from_secs(3600)).expect("store")
    });
    let agent = Agent::new("agent", ModelIdentity::default(), Arc::clone(&store));
    let server = Server::bind(
        "127.0.0.1:0".parse().expect("addr"),
        ServerConfig::default(),
        Arc::new(agent),
    )
    .await
    .expect("bind");
    let url = format!("http://{}", server.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let mut base = vec![0u8; size_mib << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in base.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let base = Arc::new(base);
    let hostile = arg(6, 0);
    let addr = server_addr(&url);
    let attackers: Vec<_> = (0..hostile)
        .map(|i| tokio::spawn(attack(addr, i % 3)))
        .collect();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (url, base, next) = (url.clone(), Arc::clone(&base), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let config = ClientConfig {
                http2,
                retries: 0,
                ..ClientConfig::default()
            };
            let client = AvpClient::new(&url, config).expect("client");
            let mut results = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= messages {
                    return results;
                }
                let bytes = Bytes::from(message(index, &base));
                let sent = Instant::now();
                let answer = client.transmit(bytes).await;
                // Only the index is kept: the message is rebuilt to compare, so
                // the peak RSS reflects the server and what is in flight.
                results.push((sent.elapsed(), index, answer));
            }
        }));
    }
    let mut latencies = Vec::new();
    let (mut lost, mut corrupted) = (0usize, 0usize);
    for worker in workers {
        for (latency, index, answer) in worker.await.expect("worker") {
            latencies.push(latency);
            let Ok(answer) = answer else {
                lost += 1;
                continue;
            };
            let id = answer["request_id"].as_str().unwrap_or_default().to_owned();
            match store.get(&id) {
                Ok(Some((_, stored))) if stored[..] == message(index, &base)[..] => {}
                Ok(Some(_)) => corrupted += 1,
                _ => lost += 1,
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    lost += messages - latencies.len();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    for attacker in &attackers {
        attacker.abort();
    }
    println!(
        "{messages} transmits of {size_mib} MiB over {connections} {} connections, {} store, {hostile} hostile connections: lost {lost}, corrupted {corrupted}; \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {wall:.1} s wall, {:.0} MiB/s, {:.0} msg/s; peak RSS {}",
        if http2 { "h2c" } else { "HTTP/1.1" },
        if in_memory { "memory" } else { "fsync'd disk" },
        pct(0.50),
        pct(0.99),
        pct(1.0),
        (messages * size_mib) as f64 / wall,
        messages as f64 / wall,
        peak_rss()
    );
    let _ = stop.send(());
    serving.await.expect("join").expect("served");
    if !in_memory {
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

fn server_addr(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("server address")
}

/// `VmHWM` of this process (server and clients together), Linux only.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        })
        .unwrap_or_else(|| "n/a".to_owned())
}

/// One hostile connection, reconnecting whenever the server drops it:
/// kind 0 stalls after the head, 1 trickles, 2 declares ~1 GiB and stalls.
async fn attack(addr: std::net::SocketAddr, kind: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
            return;
        };
        if socket.bind("127.0.0.2:0".parse().expect("addr")).is_err() {
            return;
        }
        let Ok(mut stream) = socket.connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let head = "POST /avp/v2/transmit HTTP/1.1\r\nHost: x\r\nContent-Type: application/avp+binary\r\nContent-Length: 1073741824\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let mut header = b"AV\x01\x00".to_vec();
        header.extend_from_slice(&((1u32 << 30) - 12).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        match kind {
            0 => {}
            1 => {
                for byte in header.iter().chain(std::iter::repeat(&0u8)) {
                    if stream.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                continue;
            }
            _ => {
                let _ = stream.write_all(&header).await;
            }
        }
        // Wait for the server to answer or drop us, then start over.
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    }
}

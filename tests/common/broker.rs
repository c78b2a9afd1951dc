//! A real Kafka-protocol broker for tests and benchmarks: `tansu` on a free loopback port
//! with in-memory storage, and topics created with its own CLI.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running broker; killed when dropped.
pub struct Broker {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Broker {
    /// The broker's process id (the benchmark reads its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tansu binary: `$CORDON_TANSU`, else the build of `.ci/tansu.sh`
/// (`~/.cache/cordon/tansu-0.6.0-indexed/bin/tansu`). Stock tansu 0.6.0 is not used: its
/// memory storage answers a fetch from the middle of a producer batch with the *next* batch,
/// so a consumer resuming from a checkpoint loses records, and can send a batch twice
/// (`.ci/tansu.sh` fixes both, and makes fetches cheap and prompt).
pub fn tansu() -> PathBuf {
    let p = tansu_path();
    assert!(
        p.exists(),
        "no tansu at {}: run .ci/tansu.sh (or set CORDON_TANSU)",
        p.display()
    );
    p
}

/// Where [`tansu`] looks, whether or not it is there.
pub fn tansu_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CORDON_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    Path::new(&home).join(".cache/cordon/tansu-0.6.0-indexed/bin/tansu")
}

/// Starts a broker with the topics `events` (4 partitions), `alerts` and `dead`.
pub fn broker() -> Broker {
    broker_with(&[("events", 4), ("alerts", 1), ("dead", 1)])
}

/// Starts a broker with these topics and partition counts.
pub fn broker_with(topics: &[(&str, u32)]) -> Broker {
    broker_advertising(topics, None)
}

/// Where the broker's output goes: nowhere, or with `CORDON_TANSU_LOG=DIR` appended to
/// `DIR/tansu.log` (with `RUST_LOG`, e.g. `tansu_broker::coordinator=debug`, to see how a
/// consumer group formed when a test waited on it).
fn log() -> Stdio {
    let Some(dir) = std::env::var_os("CORDON_TANSU_LOG") else {
        return Stdio::null();
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(&dir).join("tansu.log"))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a broker that tells clients to connect to `advertised` (a proxy in front of it)
/// instead of its own port; `addr` is still its own port.
pub fn broker_advertising(topics: &[(&str, u32)], advertised: Option<u16>) -> Broker {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
    let child = Command::new(tansu())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(log())
        .stderr(log())
        .spawn()
        .expect("tansu: run .ci/tansu.sh (or set CORDON_TANSU)");
    let b = Broker {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(&b.addr).is_ok() {
            for (topic, partitions) in topics {
                let partitions = partitions.to_string();
                let o = Command::new(tansu())
                    .args([
                        "topic",
                        "create",
                        topic,
                        "--partitions",
                        &partitions,
                        "--broker",
                        &url,
                    ])
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            }
            return b;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("tansu did not listen on {port}");
}

/// A TCP relay on loopback in front of a broker that advertises the relay's port, so every
/// connection a client makes goes through it; [`Relay::cut`] closes them all and refuses new
/// ones until [`Relay::restore`] — the broker unreachable, as in a network partition.
pub struct Relay {
    state: std::sync::Arc<RelayState>,
}

#[derive(Default)]
struct RelayState {
    cut: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
    open: std::sync::Mutex<Vec<std::net::TcpStream>>,
    /// Connections closed or refused while cut.
    refused: std::sync::atomic::AtomicU64,
}

impl Relay {
    /// Listens on `port` and relays each connection to `upstream`.
    pub fn start(port: u16, upstream: &str) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = std::sync::Arc::new(RelayState::default());
        let s = state.clone();
        let upstream = upstream.to_owned();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if s.cut.load(Ordering::Relaxed) {
                    s.refused.fetch_add(1, Ordering::Relaxed);
                    drop(down);
                    continue;
                }
                let _ = down.set_nonblocking(false);
                let Ok(up) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                // Checked again under the lock `cut` takes: a connection accepted while
                // the relay was being cut must not outlive the cut.
                let mut open = s.open.lock().unwrap();
                if s.cut.load(Ordering::Relaxed) {
                    s.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                for (from, to) in [(&down, &up), (&up, &down)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
                open.push(down);
                open.push(up);
            }
        });
        Relay { state }
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        let mut open = self.state.open.lock().unwrap();
        self.state.cut.store(true, Ordering::Relaxed);
        for c in open.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
            self.state.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Relays again.
    pub fn restore(&self) {
        self.state
            .cut
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Connections closed by [`Relay::cut`] or refused while cut.
    pub fn refused(&self) -> u64 {
        self.state
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Sends one record, waiting while the producer's queue is full (serving its delivery
/// reports meanwhile) rather than failing.
pub fn send(p: &rdkafka::producer::BaseProducer, rec: rdkafka::producer::BaseRecord<'_, str, str>) {
    let mut rec = rec;
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, r)) => {
                p.poll(Duration::from_millis(5));
                rec = r;
            }
        }
    }
}

//! A fault-injecting HTTP proxy between kstack and the AWS emulator, seeded so a failing run
//! can be replayed. Per request it passes it on, or answers with throttling or a 5xx, resets
//! the connection, delays it, or passes it on and then drops the reply (the server acted,
//! kstack never hears). One request per connection keeps the bookkeeping exact.
//!
//! It also stands in for the console output AWS posts for an instance, which the emulator
//! never shows (its GetConsoleOutput always answers the same sample text).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Throttle,
    ServerError,
    Reset,
    Slow,
    LostReply,
}

impl Fault {
    pub const ALL: [Fault; 5] = [Fault::Throttle, Fault::ServerError, Fault::Reset, Fault::Slow, Fault::LostReply];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Throttle => "throttle",
            Fault::ServerError => "5xx",
            Fault::Reset => "reset",
            Fault::Slow => "slow",
            Fault::LostReply => "lost reply",
        }
    }
}

/// A small deterministic generator (xorshift), so the proxy needs no extra crate.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Shared {
    dice: Mutex<Dice>,
    /// Percent of requests that get a fault, spread evenly over the kinds.
    rate: AtomicRate,
    injected: Mutex<BTreeMap<Fault, u64>>,
    upstream: String,
    /// What GetConsoleOutput answers for an instance instead of the emulator, once set.
    console: Mutex<Option<ConsoleSource>>,
    console_reads: std::sync::atomic::AtomicU64,
    /// Actions (`Action=` of the query protocols) whose next request loses its reply.
    losing: Mutex<Vec<String>>,
}

/// An instance's console output by its id; `None` leaves the answer to the emulator.
pub type ConsoleSource = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What cloud-init prints to an instance's console at first boot, with these public keys
/// (`type base64 [comment]` lines) between its host key markers.
pub fn cloud_init_console(public_keys: &str) -> String {
    format!(
        "[   11.2] cloud-init[803]: Cloud-init v. 0.7.9 running 'modules:final'\n\
         -----BEGIN SSH HOST KEY KEYS-----\n{}\n-----END SSH HOST KEY KEYS-----\n\
         [   11.9] cloud-init[803]: Cloud-init v. 0.7.9 finished\n",
        public_keys.trim()
    )
}

struct AtomicRate(std::sync::atomic::AtomicU64);

pub struct FaultProxy {
    pub endpoint: String,
    shared: Arc<Shared>,
    running: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Proxies to `upstream` (`http://127.0.0.1:PORT`), faulting `rate` percent of requests.
    pub fn start(upstream: &str, seed: u64, rate: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            dice: Mutex::new(Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)),
            rate: AtomicRate(std::sync::atomic::AtomicU64::new(rate)),
            injected: Mutex::new(BTreeMap::new()),
            upstream: upstream.trim_start_matches("http://").to_owned(),
            console: Mutex::new(None),
            console_reads: std::sync::atomic::AtomicU64::new(0),
            losing: Mutex::new(Vec::new()),
        });
        let running = Arc::new(AtomicBool::new(true));
        let (accepting, serving) = (Arc::clone(&running), Arc::clone(&shared));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if !accepting.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let shared = Arc::clone(&serving);
                std::thread::spawn(move || serve(client, &shared));
            }
        });
        FaultProxy { endpoint, shared, running }
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<Fault, u64> {
        self.shared.injected.lock().unwrap().clone()
    }

    /// From now on, GetConsoleOutput answers `text` for every instance (base64-encoded, as
    /// AWS does); `None` hands it back to the emulator.
    pub fn set_console_output(&self, text: Option<String>) {
        self.set_console_source(text.map(|text| -> ConsoleSource { Arc::new(move |_: &str| Some(text.clone())) }));
    }

    /// From now on, GetConsoleOutput answers what `source` gives for the instance asked about.
    pub fn set_console_source(&self, source: Option<ConsoleSource>) {
        *self.shared.console.lock().unwrap() = source;
    }

    /// How many GetConsoleOutput requests came through.
    pub fn console_reads(&self) -> u64 {
        self.shared.console_reads.load(Ordering::SeqCst)
    }

    /// The next request of each of `actions` (e.g. `DetachInternetGateway`) is passed on and
    /// its reply dropped, whatever the rate.
    pub fn lose_next_reply_of(&self, actions: &[&str]) {
        self.shared.losing.lock().unwrap().extend(actions.iter().map(|a| (*a).to_owned()));
    }

    /// Actions given to [`FaultProxy::lose_next_reply_of`] no request has come for yet.
    pub fn replies_still_to_lose(&self) -> Vec<String> {
        self.shared.losing.lock().unwrap().clone()
    }

    pub fn set_rate(&self, percent: u64) {
        self.shared.rate.0.store(percent, Ordering::SeqCst);
    }

    /// The environment kstack needs to go through this proxy.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("AWS_ENDPOINT_URL", self.endpoint.clone())]
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.running.store(false, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.endpoint.trim_start_matches("http://"));
    }
}

/// Reads one HTTP/1.1 request (headers and a Content-Length body).
fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let headers = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
    let length: usize = headers.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    while buffer.len() < header_end + length {
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Some(buffer)
}

/// The request with `Connection: close`, so the emulator ends the response with EOF.
fn closing(request: &[u8]) -> Vec<u8> {
    let end = request.windows(4).position(|w| w == b"\r\n\r\n").map_or(request.len(), |e| e + 4);
    let head = String::from_utf8_lossy(&request[..end]);
    let mut out: String =
        head.split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty()).map(|l| format!("{l}\r\n")).collect();
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&request[end..]);
    bytes
}

/// The signing service of the request (`.../<region>/<service>/aws4_request`).
fn service(request: &[u8]) -> String {
    let head = String::from_utf8_lossy(request);
    head.split("Credential=").nth(1).and_then(|c| c.split('/').nth(3)).unwrap_or_default().to_owned()
}

/// An error response in the service's protocol: EC2's own XML, or the query protocol's.
fn error_response(service: &str, status: &str, code: &str) -> Vec<u8> {
    let body = if service == "ec2" {
        format!("<Response><Errors><Error><Code>{code}</Code><Message>injected</Message></Error></Errors><RequestID>fault</RequestID></Response>")
    } else {
        format!("<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>injected</Message></Error><RequestId>fault</RequestId></ErrorResponse>")
    };
    format!("HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
}

fn forward(upstream: &str, request: &[u8]) -> Option<Vec<u8>> {
    let mut server = TcpStream::connect(upstream).ok()?;
    server.write_all(&closing(request)).ok()?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).ok()?;
    Some(response)
}

/// The `Action=` of a query-protocol request (EC2, IAM, Auto Scaling, ELB), from its body.
fn query_action(request: &[u8]) -> Option<String> {
    let request = String::from_utf8_lossy(request);
    let body = request.split("\r\n\r\n").nth(1)?;
    body.split('&').find_map(|pair| pair.strip_prefix("Action=")).map(str::to_owned)
}

/// The instance a GetConsoleOutput request asks about.
fn console_instance(request: &[u8]) -> String {
    let request = String::from_utf8_lossy(request);
    request.split("InstanceId=").nth(1).and_then(|rest| rest.split('&').next()).unwrap_or_default().to_owned()
}

/// EC2's answer to GetConsoleOutput with `text` as the instance's console output.
fn console_response(instance: &str, text: &str) -> Vec<u8> {
    let body = format!(
        "<GetConsoleOutputResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>console</requestId>\
         <instanceId>{instance}</instanceId><timestamp>2026-01-01T00:00:00.000Z</timestamp><output>{}</output>\
         </GetConsoleOutputResponse>",
        aws_smithy_types::base64::encode(text)
    );
    format!("HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
}

fn serve(mut client: TcpStream, shared: &Shared) {
    let Some(request) = read_request(&mut client) else { return };
    let service = service(&request);
    if service == "ec2" && request.windows(24).any(|w| w == b"Action=GetConsoleOutput&") {
        shared.console_reads.fetch_add(1, Ordering::SeqCst);
        let instance = console_instance(&request);
        let source = shared.console.lock().unwrap().clone();
        if let Some(text) = source.and_then(|source| source(&instance)) {
            let _ = client.write_all(&console_response(&instance, &text));
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    }
    // The state bucket is not under test here; its requests pass untouched.
    let losing = {
        let mut losing = shared.losing.lock().unwrap();
        let action = query_action(&request);
        losing.iter().position(|a| Some(a.as_str()) == action.as_deref()).map(|at| losing.remove(at)).is_some()
    };
    let fault = if service == "s3" {
        None
    } else if losing {
        Some(Fault::LostReply)
    } else {
        let mut dice = shared.dice.lock().unwrap();
        let rate = shared.rate.0.load(Ordering::SeqCst);
        dice.chance(rate).then(|| Fault::ALL[(dice.next() % Fault::ALL.len() as u64) as usize])
    };
    if let Some(fault) = fault {
        *shared.injected.lock().unwrap().entry(fault).or_default() += 1;
    }
    let throttle_code = if service == "ec2" { "RequestLimitExceeded" } else { "Throttling" };
    match fault {
        Some(Fault::Throttle) => drop(client.write_all(&error_response(&service, "400 Bad Request", throttle_code))),
        Some(Fault::ServerError) => drop(client.write_all(&error_response(&service, "503 Service Unavailable", "ServiceUnavailable"))),
        Some(Fault::Reset) => {}
        Some(Fault::LostReply) => drop(forward(&shared.upstream, &request)),
        Some(Fault::Slow) => {
            std::thread::sleep(Duration::from_millis(1500));
            if let Some(response) = forward(&shared.upstream, &request) {
                let _ = client.write_all(&response);
            }
        }
        None => {
            if let Some(response) = forward(&shared.upstream, &request) {
                let _ = client.write_all(&response);
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

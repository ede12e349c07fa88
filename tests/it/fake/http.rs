//! A small HTTP/1.1 server on std threads: one accept thread per port and one
//! thread per connection. Hand-rolled rather than wiremock because the fake
//! must refuse connections for a while and come back on the same port, reset
//! a connection in the middle of an upload, and keep serving while a test
//! blocks its own runtime on a child process.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortKind {
    /// FirecREST API and the S3 routes.
    Api,
    /// The OAuth2 token endpoint.
    Token,
}

/// One parsed request.
pub struct Request {
    pub method: String,
    /// Path without the query, as sent (not decoded).
    pub path: String,
    /// Raw query string (without `?`).
    pub raw_query: String,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a handler tells the connection to do.
pub enum Reply {
    Response(Response),
    /// Close the connection without answering (the server went away).
    Close,
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Response {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body,
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let body = if status == 204 {
            Vec::new()
        } else {
            serde_json::to_vec(value).unwrap()
        };
        Response::new(status, "application/json", body)
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What the server needs from the fake's core.
pub trait Handler: Send + Sync + 'static {
    /// The server is stopping: threads exit.
    fn shutting_down(&self) -> bool;
    /// The port refuses connections right now.
    fn is_away(&self, port: PortKind) -> bool;
    /// Decided as soon as the head is read: drop this request mid-body.
    fn reset_before_body(&self, port: PortKind, method: &str, path: &str) -> bool;
    /// Answers one request.
    fn handle(&self, port: PortKind, request: Request) -> Reply;
    /// Records a request that never got an answer (reset or dropped).
    fn dropped(&self, port: PortKind, method: &str, target: &str);
}

/// Every listener of every double in this test binary gets a loopback
/// address of its own (127.1.0.1, 127.1.0.2, ...): a port it lets go during
/// an outage can then only be taken back by itself. On 127.0.0.1 another
/// test's socket bound to port 0 could get it, and a test of a server that
/// is down would reach that one instead (seen: `check` passing against
/// another test's double).
fn own_loopback_address() -> std::net::Ipv4Addr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // 127.1.0.1 to 127.1.255.254, then around again (far more than a run
    // starts).
    let n = n % 65_534 + 1;
    std::net::Ipv4Addr::new(127, 1, (n >> 8) as u8, (n & 0xff) as u8)
}

/// Binds a loopback address of its own on a free port and serves it until
/// shutdown, closing the listener while the handler says the port is away.
pub fn serve<H: Handler>(handler: Arc<H>, port: PortKind) -> (SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind((own_loopback_address(), 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let join = thread::Builder::new()
        .name(format!("fake-accept-{port:?}"))
        .spawn(move || accept_loop(handler, port, addr, listener))
        .unwrap();
    (addr, join)
}

fn accept_loop<H: Handler>(h: Arc<H>, port: PortKind, addr: SocketAddr, first: TcpListener) {
    first.set_nonblocking(true).unwrap();
    let mut listener = Some(first);
    while !h.shutting_down() {
        if h.is_away(port) {
            // Dropping the socket makes connect() fail with ECONNREFUSED.
            listener = None;
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(addr) {
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    listener.insert(l)
                }
                Err(_) => {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        match l.accept() {
            Ok((stream, _)) => {
                let h = h.clone();
                let _ = thread::Builder::new()
                    .name("fake-conn".into())
                    .spawn(move || serve_connection(h, port, stream));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

enum ReadOutcome {
    Data,
    Closed,
}

/// Reads more bytes into `buf`; idles through read timeouts unless the
/// server is stopping or away.
fn read_more<H: Handler>(
    h: &H,
    port: PortKind,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> ReadOutcome {
    let mut tmp = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut tmp) {
            Ok(0) => return ReadOutcome::Closed,
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                return ReadOutcome::Data;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if h.shutting_down() || h.is_away(port) {
                    return ReadOutcome::Closed;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return ReadOutcome::Closed,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn serve_connection<H: Handler>(h: Arc<H>, port: PortKind, mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p;
            }
            if buf.len() > 256 * 1024 {
                return;
            }
            if let ReadOutcome::Closed = read_more(&*h, port, &mut stream, &mut buf) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let version = first.next().unwrap_or("HTTP/1.1").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let hv = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let (path, raw_query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.clone(), String::new()),
        };
        if h.is_away(port) {
            return;
        }
        if h.reset_before_body(port, &method, &path) {
            // Let some of the body arrive, then close without reading it.
            thread::sleep(Duration::from_millis(50));
            h.dropped(port, &method, &target);
            return;
        }
        if hv("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        let chunked = hv("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        let body = if chunked {
            match read_chunked(&*h, port, &mut stream, &mut buf) {
                Some(b) => b,
                None => return,
            }
        } else {
            let len: usize = hv("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < len {
                if let ReadOutcome::Closed = read_more(&*h, port, &mut stream, &mut buf) {
                    return;
                }
            }
            buf.drain(..len).collect()
        };
        let close = hv("connection")
            .map(|v| v.eq_ignore_ascii_case("close"))
            .unwrap_or(version == "HTTP/1.0");
        let query = url::form_urlencoded::parse(raw_query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let request = Request {
            method,
            path,
            raw_query,
            query,
            headers,
            body,
        };
        match h.handle(port, request) {
            Reply::Response(r) => {
                if write_response(&mut stream, &r, close).is_err() || close {
                    return;
                }
            }
            Reply::Close => return,
        }
    }
}

fn read_chunked<H: Handler>(
    h: &H,
    port: PortKind,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = find(buf, b"\r\n") {
                break p;
            }
            if let ReadOutcome::Closed = read_more(h, port, stream, buf) {
                return None;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                if let Some(p) = find(buf, b"\r\n") {
                    let empty = p == 0;
                    buf.drain(..p + 2);
                    if empty {
                        return Some(body);
                    }
                    continue;
                }
                if let ReadOutcome::Closed = read_more(h, port, stream, buf) {
                    return None;
                }
            }
        }
        while buf.len() < size + 2 {
            if let ReadOutcome::Closed = read_more(h, port, stream, buf) {
                return None;
            }
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn write_response(stream: &mut TcpStream, r: &Response, close: bool) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if r.status != 204 {
        head.push_str(&format!("content-length: {}\r\n", r.body.len()));
    }
    head.push_str(&format!(
        "date: {}\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now())
    ));
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if r.status != 204 {
        stream.write_all(&r.body)?;
    }
    stream.flush()
}

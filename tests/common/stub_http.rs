//! A tiny scripted HTTP/1.1 server on 127.0.0.1 for what no real server does on demand (a 429 with
//! Retry-After, a 503, a cut-short body, a token that stops working). Used in addition to real-server
//! tests, never instead. One request per connection; every request is recorded.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct StubRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl StubRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub enum StubReply {
    /// A complete response, sent after `delay`.
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
        delay: Duration,
    },
    /// These bytes, then the connection is closed (for cut-short answers).
    Raw(Vec<u8>),
    /// No answer at all, ever.
    Hang,
}

impl StubReply {
    pub fn json(status: u16, body: &str) -> Self {
        StubReply::Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let StubReply::Response { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    /// A redirect: `status` with `Location: <to><the request's path and query>`.
    pub fn redirect(status: u16, to: &str, request: &StubRequest) -> Self {
        StubReply::json(status, "{}").header("location", &format!("{to}{}", request.target))
    }

    pub fn delayed(mut self, by: Duration) -> Self {
        if let StubReply::Response { delay, .. } = &mut self {
            *delay = by;
        }
        self
    }
}

type Handler = dyn Fn(&StubRequest) -> StubReply + Send + Sync;

pub struct StubServer {
    pub url: String,
    requests: Arc<Mutex<Vec<StubRequest>>>,
}

impl StubServer {
    /// Starts serving on a free loopback port; `handler` decides each answer.
    pub async fn start(
        handler: impl Fn(&StubRequest) -> StubReply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let recorded = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, recorded) = (Arc::clone(&handler), Arc::clone(&recorded));
                tokio::spawn(async move { serve(stream, handler, recorded).await });
            }
        });
        StubServer { url, requests }
    }

    /// Where a followed redirect would land: records every request and answers 200 `{}`.
    pub async fn recorder() -> Self {
        StubServer::start(|_| StubReply::json(200, "{}")).await
    }

    /// This server under other names a redirect may use: the same port as `localhost` (another
    /// host), and its own address.
    pub fn aliases(&self) -> [String; 2] {
        [self.url.replace("127.0.0.1", "localhost"), self.url.clone()]
    }

    pub fn requests(&self) -> Vec<StubRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// How many requests went to this path (query ignored).
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path() == path)
            .count()
    }
}

/// Passes a request on to a real server (`upstream`: `http://host:port`) and brings its answer
/// back, blocking: for a stub that lets most of a conversation reach the real thing and scripts
/// the rest. HTTP/1.0, so the answer ends with the connection and is never chunked.
pub fn forward(upstream: &str, request: &StubRequest) -> StubReply {
    use std::io::{Read, Write};
    let host = upstream.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    let mut head = format!(
        "{} {} HTTP/1.0\r\nhost: {host}\r\n",
        request.method, request.target
    );
    for (k, v) in &request.headers {
        if !["host", "connection", "content-length"].contains(&k.to_ascii_lowercase().as_str()) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", request.body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&request.body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .collect();
    StubReply::Response {
        status,
        headers,
        body: body.to_owned(),
        delay: Duration::ZERO,
    }
}

async fn serve(
    mut stream: TcpStream,
    handler: Arc<Handler>,
    recorded: Arc<Mutex<Vec<StubRequest>>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    recorded.lock().unwrap().push(request.clone());
    match handler(&request) {
        StubReply::Response {
            status,
            headers,
            body,
            delay,
        } => {
            tokio::time::sleep(delay).await;
            let mut head = format!(
                "HTTP/1.1 {status} Stub\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        }
        StubReply::Raw(bytes) => {
            let _ = stream.write_all(&bytes).await;
        }
        StubReply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Option<StubRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(StubRequest {
        method,
        target,
        headers,
        body,
    })
}

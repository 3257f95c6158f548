//! A loopback HTTP/1.1 proxy in front of a real server (ZenML, OpenBao, moto) that forwards every
//! request as is, except where a test asked for a fault: an error status, a connection reset after
//! the request reached the server, a hang, a body cut short, an HTML page, garbage. It records each
//! exchange (method, path, AWS operation, when, the status the server gave, the fault applied), so
//! tests can count retries, and it hands every key value in an answer to the transcript (the leak
//! check needs to know them). Runs on its own thread, so blocking tests can use it too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::transcript;

/// What the proxy knows of a request when it decides on a fault.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The AWS operation (`X-Amz-Target` without the service prefix), if any.
    pub aws_op: Option<String>,
    pub body: Vec<u8>,
}

impl Head {
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub aws_op: Option<String>,
    /// When the whole request had arrived.
    pub at: DateTime<Utc>,
    /// `retain_period_minutes` of a ZenML rotate call.
    pub retain: Option<i64>,
    /// The status the real server answered with (`None`: not forwarded, or it never answered).
    pub upstream_status: Option<u16>,
    /// The fault applied, if any (`Fault::name`).
    pub fault: Option<&'static str>,
}

/// A fault, applied to the requests a rule matches.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and body. `forward`: the server handles the request first (it
    /// acted; its answer is replaced), else it never sees it.
    Status {
        status: u16,
        body: String,
        content_type: &'static str,
        headers: Vec<(String, String)>,
        forward: bool,
    },
    /// Forward, then reset the connection instead of answering: the answer is lost.
    ResetAfter,
    /// Forward (or not), then never answer; the connection stays open until the client leaves.
    Hang { forward: bool },
    /// Forward, then send the head and only half of the body, and close.
    Truncate,
    /// Forward, then answer the server's status with this body instead of its own.
    Body {
        body: Vec<u8>,
        content_type: &'static str,
    },
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Status { forward: true, .. } => "status-after",
            Fault::Status { .. } => "status",
            Fault::ResetAfter => "reset",
            Fault::Hang { .. } => "hang",
            Fault::Truncate => "truncate",
            Fault::Body { .. } => "body",
        }
    }

    /// A JSON error answer the server never saw the request for.
    pub fn status(status: u16, body: &str) -> Fault {
        Fault::Status {
            status,
            body: body.to_owned(),
            content_type: "application/json",
            headers: Vec::new(),
            forward: false,
        }
    }

    /// The server acted; its answer is replaced by this status.
    pub fn status_after(status: u16, body: &str) -> Fault {
        Fault::Status {
            status,
            body: body.to_owned(),
            content_type: "application/json",
            headers: Vec::new(),
            forward: true,
        }
    }

    /// A login page or a load balancer's error page where JSON was expected (status 200).
    pub fn html() -> Fault {
        Fault::Body {
            body: b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><h1>Sign in</h1></body></html>".to_vec(),
            content_type: "text/html",
        }
    }

    pub fn body(text: &str) -> Fault {
        Fault::Body {
            body: text.as_bytes().to_vec(),
            content_type: "application/json",
        }
    }
}

type Matcher = dyn Fn(&Head) -> bool + Send + Sync;

struct Rule {
    matches: Box<Matcher>,
    fault: Fault,
    /// Matching requests let through before the fault applies.
    skip: u32,
    /// How many more times it applies (`None`: always).
    times: Option<u32>,
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Exchange>>,
}

pub struct FaultProxy {
    pub url: String,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// A proxy in front of `upstream` (`http://host:port`), listening on a free loopback port.
    pub fn start(upstream: &str) -> FaultProxy {
        zenml_rotator::http::install_crypto_provider();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared::default());
        let upstream = upstream.trim_end_matches('/').to_owned();
        let state = shared.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listener, upstream, state));
        });
        FaultProxy { url, shared }
    }

    /// Applies `fault` to every request `matches` accepts, from the `skip + 1`-th on, `times` times
    /// (`None`: for good).
    pub fn inject(
        &self,
        matches: impl Fn(&Head) -> bool + Send + Sync + 'static,
        fault: Fault,
        skip: u32,
        times: Option<u32>,
    ) {
        self.shared.rules.lock().unwrap().push(Rule {
            matches: Box::new(matches),
            fault,
            skip,
            times,
        });
    }

    /// Forwards everything from now on.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    pub fn log(&self) -> Vec<Exchange> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Requests so far that `which` accepts.
    pub fn count(&self, which: impl Fn(&Exchange) -> bool) -> usize {
        self.log().iter().filter(|e| which(e)).count()
    }

    /// Forgets the requests recorded so far.
    pub fn reset_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }
}

async fn serve(listener: std::net::TcpListener, upstream: String, shared: Arc<Shared>) {
    let listener = TcpListener::from_std(listener).unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let (client, upstream, shared) = (client.clone(), upstream.clone(), shared.clone());
        tokio::spawn(async move {
            let _ = connection(socket, &client, &upstream, &shared).await;
        });
    }
}

/// A request read off the client's connection.
struct Request {
    head: Head,
    target: String,
    headers: Vec<(String, String)>,
    close: bool,
}

/// Serves one client connection: requests one after the other (keep-alive), until it closes or a
/// fault ends it.
async fn connection(
    socket: TcpStream,
    client: &reqwest::Client,
    upstream: &str,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(socket);
    loop {
        let Some(req) = read_request(&mut reader).await? else {
            return Ok(());
        };
        let fault = choose(shared, &req.head);
        let mut exchange = Exchange {
            method: req.head.method.clone(),
            path: req.head.path.clone(),
            aws_op: req.head.aws_op.clone(),
            at: Utc::now(),
            retain: req.head.body_json()["retain_period_minutes"].as_i64(),
            upstream_status: None,
            fault: fault.as_ref().map(Fault::name),
        };
        let index = {
            let mut log = shared.log.lock().unwrap();
            log.push(exchange.clone());
            log.len() - 1
        };
        let forward = match &fault {
            None | Some(Fault::ResetAfter | Fault::Truncate | Fault::Body { .. }) => true,
            Some(Fault::Status { forward, .. } | Fault::Hang { forward }) => *forward,
        };
        let answer = if forward {
            let a = send_upstream(client, upstream, &req).await;
            exchange.upstream_status = a.as_ref().map(|a| a.0);
            if let Some(e) = shared.log.lock().unwrap().get_mut(index) {
                e.upstream_status = exchange.upstream_status;
            }
            a
        } else {
            None
        };
        let socket = reader.get_mut();
        match fault {
            None => match answer {
                Some((status, headers, body)) => {
                    write_response(socket, status, &headers, &body, body.len()).await?
                }
                // The server is gone: the client sees its connection reset, as it would
                // without the proxy in between.
                None => return reset(socket),
            },
            Some(Fault::Status {
                status,
                body,
                content_type,
                headers,
                ..
            }) => {
                let mut h = vec![("content-type".to_owned(), content_type.to_owned())];
                h.extend(headers);
                write_response(socket, status, &h, body.as_bytes(), body.len()).await?
            }
            Some(Fault::ResetAfter) => return reset(socket),
            Some(Fault::Hang { .. }) => {
                // Read until the client gives up; never answer.
                let mut sink = [0u8; 1024];
                while reader.read(&mut sink).await.unwrap_or(0) > 0 {}
                return Ok(());
            }
            Some(Fault::Truncate) => {
                let (status, headers, body) = answer.unwrap_or((200, Vec::new(), b"{}".to_vec()));
                let half = body.len() / 2;
                write_response(socket, status, &headers, &body[..half], body.len()).await?;
                socket.shutdown().await?;
                return Ok(());
            }
            Some(Fault::Body { body, content_type }) => {
                let status = answer.as_ref().map_or(200, |a| a.0);
                let h = vec![("content-type".to_owned(), content_type.to_owned())];
                write_response(socket, status, &h, &body, body.len()).await?
            }
        }
        if req.close {
            return Ok(());
        }
    }
}

/// Closes the connection with a reset (RST) instead of an orderly close: the client's read fails
/// with "connection reset by peer".
fn reset(socket: &TcpStream) -> std::io::Result<()> {
    // A zero linger sends the reset at once and never blocks, which is what the deprecation of
    // `set_linger` warns about.
    #[allow(deprecated)]
    socket.set_linger(Some(Duration::ZERO))
}

/// The fault for this request, if a rule applies; counts the rule's use.
fn choose(shared: &Shared, head: &Head) -> Option<Fault> {
    let mut rules = shared.rules.lock().unwrap();
    for rule in rules.iter_mut() {
        if rule.times == Some(0) || !(rule.matches)(head) {
            continue;
        }
        if rule.skip > 0 {
            rule.skip -= 1;
            continue;
        }
        if let Some(n) = rule.times.as_mut() {
            *n -= 1;
        }
        return Some(rule.fault.clone());
    }
    None
}

async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> std::io::Result<Option<Request>> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        read_chunked(reader).await?
    } else {
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await?;
        body
    };
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let aws_op = header("x-amz-target").map(|t| {
        t.rsplit_once('.')
            .map_or(t.clone(), |(_, op)| op.to_owned())
    });
    let path = target.split('?').next().unwrap_or_default().to_owned();
    Ok(Some(Request {
        head: Head {
            method,
            path,
            aws_op,
            body,
        },
        target,
        headers,
        close,
    }))
}

async fn read_chunked<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncBufReadExt;
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).await?;
        let size =
            usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t).await? == 0 || t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk).await?;
        chunk.truncate(size);
        body.extend(chunk);
    }
}

/// The server's answer: status, headers (hop-by-hop ones dropped), whole body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

async fn send_upstream(client: &reqwest::Client, upstream: &str, req: &Request) -> Option<Answer> {
    let method = reqwest::Method::from_bytes(req.head.method.as_bytes()).ok()?;
    let mut up = client.request(method, format!("{upstream}{}", req.target));
    for (k, v) in &req.headers {
        if !matches!(
            k.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection" | "keep-alive"
        ) {
            up = up.header(k, v);
        }
    }
    let resp = up.body(req.head.body.clone()).send().await.ok()?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "content-length" | "transfer-encoding" | "connection" | "keep-alive"
            )
        })
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = resp.bytes().await.ok()?.to_vec();
    transcript::secrets_in(&body);
    Some((status, headers, body))
}

async fn write_response(
    socket: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    content_length: usize,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {content_length}\r\n\r\n"));
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body).await?;
    socket.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

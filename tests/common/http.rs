//! A deliberately small blocking HTTP/1.1 client over `std::net::TcpStream`,
//! enough for test helpers: one request per connection (`Connection: close`),
//! Content-Length or chunked responses, streaming bodies.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names are lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

/// A response whose body has not been read yet.
pub struct StreamingResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Box<dyn Read + Send>,
}

impl StreamingResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Splits `http://host:port/path?query` into (`host:port`, `/path?query`).
pub fn split_url(url: &str) -> io::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("not http: {url}")))?;
    match rest.find('/') {
        Some(i) => Ok((rest[..i].to_string(), rest[i..].to_string())),
        None => Ok((rest.to_string(), "/".to_string())),
    }
}

pub fn get(url: &str) -> io::Result<Response> {
    request("GET", url, &[], &[])
}

pub fn head(url: &str) -> io::Result<Response> {
    request("HEAD", url, &[], &[])
}

/// Sends a request with an in-memory body and reads the whole response.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut body_reader = body;
    let r = request_streaming(
        method,
        url,
        headers,
        Some((&mut body_reader, body.len() as u64)),
    )?;
    let mut out = Vec::new();
    let mut b = r.body;
    if method != "HEAD" {
        b.read_to_end(&mut out)?;
    }
    Ok(Response {
        status: r.status,
        headers: r.headers,
        body: out,
    })
}

/// Sends a request whose body (if any) is streamed from `body` with the given
/// length, and returns the response with an unread body. For `HEAD` requests
/// and 204/304 responses the body is empty.
pub fn request_streaming(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&mut dyn Read, u64)>,
) -> io::Result<StreamingResponse> {
    let (host, _) = split_url(url)?;
    let stream = TcpStream::connect(&host)?;
    exchange(stream, method, url, headers, body)
}

/// A request without a body whose connection, reads and writes each time
/// out after `timeout` (instead of 120 s), with the response body unread:
/// for load tests, where every wait must be short and bounded.
pub fn request_streaming_timeout(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<StreamingResponse> {
    let (host, _) = split_url(url)?;
    let addr: std::net::SocketAddr = host
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    exchange_with(stream, method, url, headers, None, timeout)
}

/// [`request`] from the local address `local` (e.g. `127.0.0.2`: another
/// loopback client as far as the server can tell).
pub fn request_from(
    local: std::net::IpAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    let (host, _) = split_url(url)?;
    let stream = connect_from(local, &host)?;
    let r = exchange(stream, method, url, headers, None)?;
    let mut out = Vec::new();
    let mut b = r.body;
    if method != "HEAD" {
        b.read_to_end(&mut out)?;
    }
    Ok(Response {
        status: r.status,
        headers: r.headers,
        body: out,
    })
}

/// A TCP connection to `host` (`ip:port`) bound to the local address
/// `local` (std cannot bind before connecting; tokio's socket can).
pub fn connect_from(local: std::net::IpAddr, host: &str) -> io::Result<TcpStream> {
    let addr: std::net::SocketAddr = host
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect {addr}")))?
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Sends one request on `stream` and reads the response head.
fn exchange(
    stream: TcpStream,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&mut dyn Read, u64)>,
) -> io::Result<StreamingResponse> {
    exchange_with(stream, method, url, headers, body, Duration::from_secs(120))
}

/// [`exchange`] with `timeout` on each read and write.
fn exchange_with(
    stream: TcpStream,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(&mut dyn Read, u64)>,
    timeout: Duration,
) -> io::Result<StreamingResponse> {
    let (host, path) = split_url(url)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut w = io::BufWriter::with_capacity(1 << 16, stream.try_clone()?);
    write!(
        w,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    )?;
    for (k, v) in headers {
        write!(w, "{k}: {v}\r\n")?;
    }
    match body {
        Some((reader, len))
            if len > 0 || method == "PUT" || method == "POST" || method == "PATCH" =>
        {
            write!(w, "Content-Length: {len}\r\n\r\n")?;
            let copied = io::copy(&mut reader.take(len), &mut w)?;
            if copied != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("request body: wrote {copied} of {len} bytes"),
                ));
            }
        }
        _ => write!(w, "\r\n")?,
    }
    w.flush()?;
    drop(w);

    let mut r = BufReader::with_capacity(1 << 16, stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            )
        })?;
    let mut hdrs = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof in headers",
            ));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            hdrs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    let body: Box<dyn Read + Send> = if no_body {
        Box::new(io::empty())
    } else if find_header(&hdrs, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        Box::new(Chunked {
            r,
            left: 0,
            done: false,
        })
    } else if let Some(n) = find_header(&hdrs, "content-length").and_then(|v| v.parse::<u64>().ok())
    {
        Box::new(Exact {
            r: r.take(n),
            want: n,
            got: 0,
        })
    } else {
        Box::new(r)
    };
    Ok(StreamingResponse {
        status,
        headers: hdrs,
        body,
    })
}

/// A Content-Length body that reports a short read as an error (so a proxy
/// aborting a stream is visible to the caller, not a silent truncation).
struct Exact<R> {
    r: io::Take<R>,
    want: u64,
    got: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.r.read(buf)?;
        self.got += n as u64;
        if n == 0 && self.got < self.want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("body ended after {} of {} bytes", self.got, self.want),
            ));
        }
        Ok(n)
    }
}

struct Chunked<R> {
    r: BufReader<R>,
    left: u64,
    done: bool,
}

impl<R: Read> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "eof in chunk size",
                ));
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = u64::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if self.left == 0 {
                // Trailers until the empty line.
                loop {
                    line.clear();
                    if self.r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                self.done = true;
                return Ok(0);
            }
        }
        let max = buf.len().min(self.left as usize);
        let n = self.r.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunk"));
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.r.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

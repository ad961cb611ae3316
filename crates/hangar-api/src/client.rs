//! A minimal HTTP/1.1 client for `hangard`'s unix socket: one request per connection
//! (`Connection: close`), bodies with `Content-Length` or chunked encoding. Enough for the CLI;
//! it is not a general HTTP client.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Why a request failed before a response arrived.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens on the socket.
    NotRunning(std::io::Error),
    /// The exchange broke or the response was malformed.
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotRunning(e) => write!(f, "hangard is not running: {e}"),
            ClientError::Protocol(s) => write!(f, "bad response from hangard: {s}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Sends one request and reads the whole response.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(ClientError::NotRunning)?;
    let proto = |e: std::io::Error| ClientError::Protocol(e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(proto)?;
    stream.set_write_timeout(Some(timeout)).map_err(proto)?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: hangard\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // The server may answer (413) and close before reading all of an oversized body: a failed
    // write is only an error if no response can be read either.
    let written = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body));
    let mut reader = BufReader::new(stream);
    if let Err(e) = written {
        if reader.fill_buf().map(|b| b.is_empty()).unwrap_or(true) {
            return Err(proto(e));
        }
    }
    let mut line = String::new();
    reader.read_line(&mut line).map_err(proto)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("status line {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        reader.read_line(&mut line).map_err(proto)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse::<usize>().ok();
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(proto)?;
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| ClientError::Protocol(format!("chunk size {line:?}")))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).map_err(proto)?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        reader.read_exact(&mut body).map_err(proto)?;
    } else {
        reader.read_to_end(&mut body).map_err(proto)?;
    }
    Ok(Response { status, body })
}

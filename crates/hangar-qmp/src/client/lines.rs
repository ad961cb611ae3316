//! `\n`-terminated lines off the socket, each at most a configured length.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::error::QmpError;

/// Reads `\n`-terminated lines with a length cap.
pub(super) struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
}

#[derive(Debug)]
pub(super) enum LineError {
    Io(io::Error),
    TooLong(usize),
    Truncated(usize),
}

impl LineError {
    pub(super) fn detail(&self) -> String {
        match self {
            LineError::Io(e) => format!("read failed: {e}"),
            LineError::TooLong(max) => format!("a message is longer than the {max}-byte limit"),
            LineError::Truncated(n) => {
                format!("the connection closed in the middle of a message ({n} bytes unterminated)")
            }
        }
    }

    pub(super) fn into_error(self, doing: &str) -> QmpError {
        match self {
            LineError::Io(e) => {
                QmpError::Disconnected { command: None, reason: format!("{doing}: {e}") }
            }
            other => QmpError::protocol(format!("{doing}: {}", other.detail())),
        }
    }
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(super) fn new(read: R, max: usize) -> Self {
        LineReader { inner: BufReader::with_capacity(64 * 1024, read), max }
    }

    /// The next line without its terminator; `None` at a clean EOF. Cancel-safe only between
    /// lines (the reader task never cancels it).
    pub(super) async fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        let mut line = Vec::new();
        loop {
            let buf = self.inner.fill_buf().await.map_err(LineError::Io)?;
            if buf.is_empty() {
                return if line.is_empty() {
                    Ok(None)
                } else {
                    Err(LineError::Truncated(line.len()))
                };
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if line.len() + take > self.max {
                return Err(LineError::TooLong(self.max));
            }
            line.extend_from_slice(&buf[..take]);
            self.inner.consume(if done { take + 1 } else { take });
            if done {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8], max: usize) -> Vec<Result<Option<Vec<u8>>, String>> {
        let mut r = LineReader::new(input, max);
        let mut out = Vec::new();
        loop {
            let item = r.next_line().await.map_err(|e| e.detail());
            let stop = !matches!(item, Ok(Some(_)));
            out.push(item);
            if stop {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn line_reader_splits_strips_cr_and_caps() {
        let got = lines_of(b"{\"a\":1}\r\n\n{}\n", 100).await;
        assert_eq!(
            got,
            vec![
                Ok(Some(b"{\"a\":1}".to_vec())),
                Ok(Some(vec![])),
                Ok(Some(b"{}".to_vec())),
                Ok(None)
            ]
        );
        let got = lines_of(b"0123456789\n", 10).await;
        assert_eq!(got, vec![Ok(Some(b"0123456789".to_vec())), Ok(None)]);
        let got = lines_of(b"01234567890\n", 10).await;
        assert!(got[0].as_ref().unwrap_err().contains("10-byte limit"));
        let got = lines_of(b"{}\n{\"trunc", 100).await;
        assert!(got[1].as_ref().unwrap_err().contains("middle of a message"));
    }

    #[tokio::test]
    async fn line_reader_caps_across_buffer_refills() {
        // Longer than the BufReader's capacity so the cap is checked across refills.
        let big = vec![b'x'; 200 * 1024];
        let got = lines_of(&big, 100 * 1024).await;
        assert!(got[0].is_err());
        let mut ok = big.clone();
        ok.push(b'\n');
        let got = lines_of(&ok, 300 * 1024).await;
        assert_eq!(got[0].as_ref().unwrap().as_ref().unwrap().len(), 200 * 1024);
    }
}

//! One HTTP connection's bytes: requests in, responses out, keep-alive and pipelining. Engines
//! own the socket and call this; they know nothing of HTTP.

use std::net::SocketAddr;

use super::HttpHandler;
use crate::protocol::http::response::write_http;

/// Stop answering pipelined requests while this much output waits for the socket.
const MAX_PENDING_OUTPUT: usize = 256 * 1024;
const MAX_HEADERS: usize = 32;

pub struct HttpConnection {
    peer: SocketAddr,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Bytes of `output` already written to the socket.
    written: usize,
    /// Close once `output` is flushed (HTTP/1.0, `Connection: close`, `http.keep_alive: false`,
    /// or an error).
    closing: bool,
    rules: ConnectionRules,
}

/// What every connection of a listener allows; from the `http` config.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionRules {
    /// Larger requests (request line and headers) get 431 and the connection is closed.
    pub max_request_bytes: usize,
    /// Whether a connection may stay open for further requests (`http.keep_alive`).
    pub keep_alive: bool,
}

impl HttpConnection {
    pub fn new(peer: SocketAddr, rules: ConnectionRules) -> Self {
        HttpConnection {
            peer,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            closing: false,
            rules,
        }
    }

    /// Takes received bytes and answers every complete request among them.
    pub fn received(&mut self, data: &[u8], handler: &mut HttpHandler) {
        if self.closing {
            return;
        }
        if self.input.is_empty() {
            // The usual case: whole requests in one receive, answered straight from the
            // receive buffer; only a partial request's bytes are kept.
            let consumed = self.answer(data, handler);
            if !self.closing {
                self.input.extend_from_slice(&data[consumed..]);
            }
        } else {
            self.input.extend_from_slice(data);
            self.process(handler);
        }
    }

    /// Answers the complete requests waiting in the input, unless too much output is pending.
    pub fn process(&mut self, handler: &mut HttpHandler) {
        let mut input = std::mem::take(&mut self.input);
        let consumed = self.answer(&input, handler);
        input.drain(..consumed);
        if self.closing {
            input.clear();
        }
        self.input = input;
    }

    /// Answers the complete requests at the start of `input` until one is incomplete, the
    /// connection is to close, or too much output is pending; returns the bytes consumed.
    fn answer(&mut self, input: &[u8], handler: &mut HttpHandler) -> usize {
        let mut consumed = 0;
        while !self.closing && self.output.len() - self.written < MAX_PENDING_OUTPUT {
            let pending = &input[consumed..];
            if pending.is_empty() {
                break;
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(pending) {
                Ok(httparse::Status::Complete(len)) => {
                    consumed += len;
                    if has_body(&request) {
                        self.fail("400 Bad Request", "request bodies are not supported");
                        break;
                    }
                    let close = !self.rules.keep_alive
                        || request.version != Some(1)
                        || wants_close(&request);
                    handler.handle(&request, self.peer, close, &mut self.output);
                    self.closing |= close;
                }
                Ok(httparse::Status::Partial) => {
                    if pending.len() > self.rules.max_request_bytes {
                        self.fail("431 Request Header Fields Too Large", "request too large");
                    }
                    break;
                }
                Err(httparse::Error::TooManyHeaders) => {
                    self.fail("431 Request Header Fields Too Large", "too many headers");
                    break;
                }
                Err(_) => {
                    self.fail("400 Bad Request", "malformed HTTP request");
                    break;
                }
            }
        }
        consumed
    }

    fn fail(&mut self, status: &str, body: &str) {
        write_http(
            &mut self.output,
            status,
            "text/plain",
            body.as_bytes(),
            true,
        );
        self.closing = true;
    }

    /// Output not yet written to the socket.
    pub fn pending_output(&self) -> &[u8] {
        &self.output[self.written..]
    }

    /// `n` bytes of [`Self::pending_output`] went out.
    pub fn wrote(&mut self, n: usize) {
        self.written += n;
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        }
    }

    /// Moves all pending output into `into` (cleared first), for engines whose sends need a
    /// buffer that stays put while the kernel reads it.
    pub fn take_output(&mut self, into: &mut Vec<u8>) {
        into.clear();
        if self.written == 0 {
            // Trade buffers rather than copy: `output` gets `into`'s emptied allocation.
            std::mem::swap(&mut self.output, into);
        } else {
            into.extend_from_slice(&self.output[self.written..]);
            self.output.clear();
            self.written = 0;
        }
    }

    /// Whether complete requests wait (they were held back by pending output).
    pub fn has_unprocessed_input(&self) -> bool {
        !self.input.is_empty() && !self.closing
    }

    /// All output is written and the connection should now be closed.
    pub fn is_finished(&self) -> bool {
        self.closing && self.pending_output().is_empty()
    }
}

fn header<'a>(request: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a [u8]> {
    request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn wants_close(request: &httparse::Request<'_, '_>) -> bool {
    header(request, "connection").is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

fn has_body(request: &httparse::Request<'_, '_>) -> bool {
    header(request, "transfer-encoding").is_some()
        || header(request, "content-length").is_some_and(|v| v.trim_ascii() != b"0")
}

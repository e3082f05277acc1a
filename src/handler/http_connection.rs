//! One HTTP connection's bytes: requests in, responses out, keep-alive and pipelining. Engines
//! own the socket and call this; they know nothing of HTTP.
//!
//! Every buffer here is bounded: answers stop while [`MAX_PENDING_OUTPUT`] waits for the
//! socket, engines stop reading while [`HttpConnection::wants_input`] says no, and input that
//! grows past its bound anyway (an io_uring receive already in flight) closes the connection.

use std::net::SocketAddr;

use super::HttpHandler;
use crate::protocol::http::response::write_http;

/// Stop answering pipelined requests while this much output waits for the socket. A reply is
/// a few hundred bytes, so this is a hundred or so answers a client has not read yet.
pub const MAX_PENDING_OUTPUT: usize = 32 * 1024;
/// Input beyond `max_request_bytes` that a connection may hold: pipelined requests waiting
/// for the client to read its answers, plus what an engine received before it stopped. (The
/// epoll engine stops within one read; io_uring's multishot receive can hand over more in
/// one batch before its cancel lands, so a client that sends fast and never reads passes this
/// and is closed; one that reads its answers never comes near it.)
const MAX_EXTRA_INPUT: usize = 64 * 1024;
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
    /// Closing because the client sent more than its input may hold without reading.
    overflowed: bool,
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
            overflowed: false,
            rules,
        }
    }

    /// Takes received bytes and answers every complete request among them; returns how many
    /// it answered.
    pub fn received(&mut self, data: &[u8], handler: &mut HttpHandler) -> usize {
        if self.closing {
            return 0;
        }
        if self.input.is_empty() {
            // The usual case: whole requests in one receive, answered straight from the
            // receive buffer; only a partial request's bytes are kept.
            let (answered, consumed) = self.answer(data, handler);
            if !self.closing {
                self.keep_input(&data[consumed..]);
            }
            answered
        } else {
            self.keep_input(data);
            self.process(handler)
        }
    }

    /// Keeps unanswered input, unless that would pass its bound: then the connection closes
    /// once the answers already written are sent (a client may retry the rest elsewhere; one
    /// that sends without reading only loses its own requests).
    fn keep_input(&mut self, data: &[u8]) {
        if self.input.len() + data.len() > self.rules.max_request_bytes + MAX_EXTRA_INPUT {
            self.input = Vec::new();
            self.closing = true;
            self.overflowed = true;
        } else {
            self.input.extend_from_slice(data);
        }
    }

    /// Answers the complete requests waiting in the input, unless too much output is pending;
    /// returns how many it answered.
    pub fn process(&mut self, handler: &mut HttpHandler) -> usize {
        let mut input = std::mem::take(&mut self.input);
        let (answered, consumed) = self.answer(&input, handler);
        input.drain(..consumed);
        if self.closing {
            input.clear();
        }
        self.input = input;
        answered
    }

    /// Answers the complete requests at the start of `input` until one is incomplete, the
    /// connection is to close, or too much output is pending; returns how many it answered
    /// and the bytes consumed.
    fn answer(&mut self, input: &[u8], handler: &mut HttpHandler) -> (usize, usize) {
        let mut consumed = 0;
        let mut answered = 0;
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
                    answered += 1;
                    if len > self.rules.max_request_bytes {
                        // Checked here too: a whole request can arrive in one receive.
                        self.fail("431 Request Header Fields Too Large", "request too large");
                        break;
                    }
                    match body_framing(&request) {
                        BodyFraming::None => {}
                        BodyFraming::Body => {
                            self.fail("400 Bad Request", "request bodies are not supported");
                            break;
                        }
                        BodyFraming::Conflicting => {
                            // RFC 9112 6.3: differing lengths make the framing unknowable.
                            self.fail("400 Bad Request", "conflicting Content-Length headers");
                            break;
                        }
                    }
                    let close = !self.rules.keep_alive
                        || request.version != Some(1)
                        || wants_close(&request);
                    handler.handle(&request, self.peer, close, &mut self.output);
                    self.closing |= close;
                }
                Ok(httparse::Status::Partial) => {
                    if pending.len() > self.rules.max_request_bytes {
                        answered += 1;
                        self.fail("431 Request Header Fields Too Large", "request too large");
                    }
                    break;
                }
                Err(httparse::Error::TooManyHeaders) => {
                    answered += 1;
                    self.fail("431 Request Header Fields Too Large", "too many headers");
                    break;
                }
                Err(_) => {
                    answered += 1;
                    self.fail("400 Bad Request", "malformed HTTP request");
                    break;
                }
            }
        }
        (answered, consumed)
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

    /// Whether the engine should read more: not while the client leaves its answers unread,
    /// nor while a request's worth of input is already waiting.
    pub fn wants_input(&self) -> bool {
        !self.closing
            && self.output.len() - self.written < MAX_PENDING_OUTPUT
            && self.input.len() <= self.rules.max_request_bytes
    }

    /// Bytes of a request not yet answered are held (the request deadline runs).
    pub fn has_partial_input(&self) -> bool {
        !self.input.is_empty()
    }

    /// All output is written and the connection should now be closed.
    pub fn is_finished(&self) -> bool {
        self.closing && self.pending_output().is_empty()
    }

    /// Whether it is closing because the client sent more than its input may hold (it sends
    /// without reading its answers).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Bytes held for this connection, input and output (for tests of the bounds).
    pub fn buffered_bytes(&self) -> usize {
        self.input.len() + self.output.len()
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

/// What a request says of a body after its head.
enum BodyFraming {
    None,
    Body,
    /// Several Content-Length headers that disagree.
    Conflicting,
}

/// Every Content-Length header is read (the first alone would let a second one smuggle a
/// body past us as the next request).
fn body_framing(request: &httparse::Request<'_, '_>) -> BodyFraming {
    if header(request, "transfer-encoding").is_some() {
        return BodyFraming::Body;
    }
    let mut lengths = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value.trim_ascii());
    let Some(first) = lengths.next() else {
        return BodyFraming::None;
    };
    if lengths.any(|other| other != first) {
        BodyFraming::Conflicting
    } else if first == b"0" {
        BodyFraming::None
    } else {
        BodyFraming::Body
    }
}

//! Splitting a recorded exchange into the request/response units a client
//! and server exchanged: a pipeline written in one go (several RESP
//! commands, several PostgreSQL Sync groups) is recorded as one call, but
//! replay answers it one framed request at a time.

use std::ops::Range;

use crate::{Completeness, Protocol};

/// One request of a recorded exchange and the part of the response that
/// answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub request: Range<usize>,
    pub response: Range<usize>,
}

/// The units of a recorded exchange, when `protocol` frames every request
/// and every response in it and there are as many responses as requests
/// that expect one. `None` otherwise (the exchange stays one unit).
pub fn split_exchange(
    protocol: &dyn Protocol,
    request: &[u8],
    response: &[u8],
) -> Option<Vec<Unit>> {
    let mut units = Vec::new();
    let (mut at_request, mut at_response) = (0, 0);
    while at_request < request.len() {
        let Completeness::Complete(len) = protocol.frame_request(&request[at_request..]) else {
            return None;
        };
        if len == 0 {
            return None;
        }
        let this = at_request..at_request + len;
        at_request += len;
        let answer = if protocol.expects_response(&request[this.clone()]) {
            let Completeness::Complete(len) =
                protocol.frame_response(&request[this.clone()], &response[at_response..])
            else {
                return None;
            };
            at_response..at_response + len
        } else {
            at_response..at_response
        };
        at_response = answer.end;
        units.push(Unit {
            request: this,
            response: answer,
        });
    }
    (at_response == response.len() && !units.is_empty()).then_some(units)
}

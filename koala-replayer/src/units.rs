//! Recorded calls as replay answers them.
//!
//! A call is what the service sent on one connection until bytes came back,
//! and what came back until it sent again. A client that pipelines (several
//! RESP commands, two PostgreSQL Sync groups, a handshake written in one go)
//! makes one call of several requests, but at replay it may write them
//! apart, and the outbound server answers one framed request at a time. So
//! each call is split, with its connection's protocol, into *units*: one
//! request and the part of the response that answers it. A call the
//! protocol cannot split stays one unit.
//!
//! Each unit is also classified: is it part of opening the connection
//! (greeting, handshake, authentication, session settings)? Such *set-up*
//! units belong to the connection rather than to the session that happened
//! to open it: replay answers a new connection's set-up from any recorded
//! set-up to the same dependency, and a session whose recorded set-up is
//! not replayed (its connection was already open) does not miss it.

use std::collections::HashMap;

use koala_protocols::{Protocol, split_exchange};
use koala_session::{Exchange, Payload};

/// One request of a recorded call and the response that answers it.
#[derive(Clone)]
pub struct Unit {
    /// Index of the call in the session's calls.
    pub call: usize,
    /// The unit's bytes, with the call's addresses.
    pub exchange: Exchange,
    /// The protocol of the call's connection, if recognised.
    pub protocol: Option<&'static dyn Protocol>,
    /// Part of opening the connection.
    pub setup: bool,
    /// The dependency closed the connection after this response.
    pub closes: bool,
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unit")
            .field("call", &self.call)
            .field("request", &self.exchange.request)
            .field("response", &self.exchange.response)
            .field("protocol", &self.protocol.map(|p| p.name()))
            .field("setup", &self.setup)
            .field("closes", &self.closes)
            .finish()
    }
}

/// The protocol a recorded connection speaks: from its greeting, or from
/// the first request that is recognised.
pub fn connection_protocol<'a>(
    calls: impl IntoIterator<Item = &'a Exchange>,
) -> Option<&'static dyn Protocol> {
    calls.into_iter().find_map(|call| {
        if call.request.is_empty() {
            koala_protocols::detect_greeting(call.response.as_bytes())
        } else {
            koala_protocols::detect_request(call.request.as_bytes())
        }
    })
}

/// What tells a call's connection: the service's end, the peer, the
/// recorded connection id.
type Connection<'a> = (&'a str, &'a str, Option<u64>);

/// The calls of a session (or a background record) as units, in order.
pub fn expand<'a>(calls: &'a [Exchange]) -> Vec<Unit> {
    // Calls of one connection: the same `conn` where recorded, else the
    // same two addresses (a port reused within a session would merge two).
    let connection = |call: &'a Exchange| (call.local.as_str(), call.peer.as_str(), call.conn);
    let mut protocols: HashMap<Connection<'_>, Option<&'static dyn Protocol>> = HashMap::new();
    for call in calls {
        protocols.entry(connection(call)).or_insert_with(|| {
            connection_protocol(calls.iter().filter(|c| connection(c) == connection(call)))
        });
    }
    // Connections whose recorded calls are all set-up so far.
    let mut opening: HashMap<Connection<'_>, bool> = HashMap::new();
    let mut units = Vec::with_capacity(calls.len());
    for (index, call) in calls.iter().enumerate() {
        let key = connection(call);
        let protocol = protocols.get(&key).copied().flatten();
        // A connection whose first call here is not its first exchange was
        // opened (and set up) elsewhere.
        let still_opening = opening
            .entry(key)
            .or_insert_with(|| call.seq.is_none_or(|seq| seq == 0));
        let request = call.request.as_bytes();
        let response = call.response.as_bytes();
        let parts = match protocol {
            Some(protocol) if !request.is_empty() => split_exchange(protocol, request, response),
            _ => None,
        };
        let parts = parts.unwrap_or_else(|| {
            vec![koala_protocols::Unit {
                request: 0..request.len(),
                response: 0..response.len(),
            }]
        });
        let last = parts.len() - 1;
        for (at, part) in parts.into_iter().enumerate() {
            let unit_request = &request[part.request];
            let setup = *still_opening
                && (unit_request.is_empty() || protocol.is_some_and(|p| p.is_setup(unit_request)));
            *still_opening = setup;
            let unit_response = &response[part.response];
            let closes = (at == last && call.closed)
                || protocol.is_some_and(|p| p.closes_after(unit_request, unit_response));
            units.push(Unit {
                call: index,
                exchange: Exchange {
                    local: call.local.clone(),
                    peer: call.peer.clone(),
                    request: Payload::from(unit_request),
                    response: Payload::from(unit_response),
                    request_ns: call.request_ns,
                    response_ns: call.response_ns,
                    truncated: call.truncated,
                    ..Exchange::default()
                },
                protocol,
                setup,
                closes,
            });
        }
    }
    units
}

/// The calls of `calls` that hold set-up units: what other sessions' new
/// connections may be answered from.
pub fn setup_calls(calls: &[Exchange]) -> Vec<Exchange> {
    let units = expand(calls);
    let mut kept: Vec<usize> = units.iter().filter(|u| u.setup).map(|u| u.call).collect();
    kept.dedup();
    kept.into_iter().map(|index| calls[index].clone()).collect()
}

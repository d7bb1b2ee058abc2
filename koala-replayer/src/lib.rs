//! The replay half of koala: the servers started inside the process under
//! test, and the matching that picks which recorded call answers a request.

pub mod framing;
pub mod matching;

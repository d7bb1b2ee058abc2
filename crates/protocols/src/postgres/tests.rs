//! Byte sequences captured between psycopg2 2.9 / psycopg 3.2 and a
//! PostgreSQL 15 server (scram-sha-256 authentication) through a loopback
//! proxy, plus a few built by hand.

use super::*;
use crate::{Unit, split_exchange};

// psycopg2's connection: start-up, SCRAM, session parameters.
const STARTUP: &[u8] =
    b"\0\0\0>\0\x03\0\0user\0postgres\0database\0postgres\0application_name\0app\0\0";
const AUTH_SASL: &[u8] = b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0";
const SASL_INITIAL: &[u8] = b"p\0\0\x006SCRAM-SHA-256\0\0\0\0 n,,n=,r=cxLv2ME5oABc5ABLQoOcw4+Z";
const AUTH_SASL_CONTINUE: &[u8] = b"R\0\0\0\\\0\0\0\x0br=cxLv2ME5oABc5ABLQoOcw4+Z7/OLTTc3wOM4TmOg+vSub94X,s=E3y5+4zVQCvar/6JJNnGgQ==,i=4096";
const SASL_RESPONSE: &[u8] = b"p\0\0\0lc=biws,r=cxLv2ME5oABc5ABLQoOcw4+Z7/OLTTc3wOM4TmOg+vSub94X,p=FVcLiTZ0/0kGGkh4qyj1YscdqLgg3GJBdslZ45xuyPA=";
const AUTH_SASL_FINAL: &[u8] =
    b"R\0\0\x006\0\0\0\x0cv=9d78XEmnORg/Q/Svpnu1XKIqKTsCXh4FA07MQrs0RjY=";
const AUTH_OK: &[u8] = b"R\0\0\0\x08\0\0\0\0";
/// The ParameterStatus messages, BackendKeyData and ReadyForQuery that
/// follow AuthenticationOk.
const SESSION: &[&[u8]] = &[
    b"S\0\0\0\x19application_name\0app\0",
    b"S\0\0\0\x19client_encoding\0UTF8\0",
    b"S\0\0\0\x17DateStyle\0ISO, MDY\0",
    b"S\0\0\0&default_transaction_read_only\0off\0",
    b"S\0\0\0\x17in_hot_standby\0off\0",
    b"S\0\0\0\x19integer_datetimes\0on\0",
    b"S\0\0\0\x1bIntervalStyle\0postgres\0",
    b"S\0\0\0\x14is_superuser\0on\0",
    b"S\0\0\0\x19server_encoding\0UTF8\0",
    b"S\0\0\x002server_version\x0015.20 (Debian 15.20-0+deb12u1)\0",
    b"S\0\0\0#session_authorization\0postgres\0",
    b"S\0\0\0#standard_conforming_strings\0on\0",
    b"S\0\0\0\x15TimeZone\0Etc/UTC\0",
    b"K\0\0\0\x0c\0\0e\x8f\\WY\xf8",
    b"Z\0\0\0\x05I",
];

// psycopg2: simple query protocol, parameters interpolated.
const QUERY: &[u8] = b"Q\0\0\0-SELECT id, name FROM items WHERE id = 17\0";
const ROWS: &[u8] = b"T\0\0\x002\0\x02id\0\0\0@\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0name\0\0\0@\0\0\x02\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0D\0\0\0\x15\0\x02\0\0\0\x0217\0\0\0\x05appleC\0\0\0\x0dSELECT 1\0Z\0\0\0\x05T";
const SHOW: &[u8] = b"Q\0\0\0\x18SHOW server_version\0";
const TERMINATE: &[u8] = b"X\0\0\0\x04";

// psycopg 3: extended protocol, one Sync group per statement.
const EXTENDED: &[u8] = b"P\0\0\x004\0SELECT id, name FROM items WHERE id = $1\0\0\x01\0\0\0\x15B\0\0\0\x16\0\0\0\x01\0\x01\0\x01\0\0\0\x02\0\x11\0\x01\0\0D\0\0\0\x06P\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04";
const EXTENDED_ROWS: &[u8] = b"1\0\0\0\x042\0\0\0\x04T\0\0\x002\0\x02id\0\0\0@\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0name\0\0\0@\0\0\x02\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0D\0\0\0\x15\0\x02\0\0\0\x0217\0\0\0\x05appleC\0\0\0\x0dSELECT 1\0Z\0\0\0\x05T";
const EXTENDED_MISSING: &[u8] = b"P\0\0\0/\0SELECT * FROM missing WHERE id = $1\0\0\x01\0\0\0\x15B\0\0\0\x16\0\0\0\x01\0\x01\0\x01\0\0\0\x02\0\x01\0\x01\0\0D\0\0\0\x06P\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04";
const ERROR_MISSING: &[u8] = b"E\0\0\0jSERROR\0VERROR\0C42P01\0Mrelation \"missing\" does not exist\0P15\0Fparse_relation.c\0L1392\0RparserOpenTable\0\0";
const READY_FAILED: &[u8] = b"Z\0\0\0\x05E";

// psycopg 3 pipeline mode: two groups, then one Sync and a Flush.
const PIPELINE_SELECT_1: &[u8] = b"P\0\0\0\x10\0SELECT 1\0\0\0B\0\0\0\x0e\0\0\0\0\0\0\0\x01\0\0D\0\0\0\x06P\0E\0\0\0\x09\0\0\0\0\0";
const PIPELINE_SELECT_NAME: &[u8] = b"P\0\0\x000\0SELECT name FROM items WHERE id = $1\0\0\x01\0\0\0\x15B\0\0\0\x16\0\0\0\x01\0\x01\0\x01\0\0\0\x02\0\x11\0\x01\0\0D\0\0\0\x06P\0E\0\0\0\x09\0\0\0\0\0";
const SYNC_FLUSH: &[u8] = b"S\0\0\0\x04H\0\0\0\x04";
const PIPELINE_ROWS: &[u8] = b"1\0\0\0\x042\0\0\0\x04T\0\0\0!\0\x01?column?\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0D\0\0\0\x0b\0\x01\0\0\0\x011C\0\0\0\x0dSELECT 1\x001\0\0\0\x042\0\0\0\x04T\0\0\0\x1d\0\x01name\0\0\0@\0\0\x02\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0D\0\0\0\x0f\0\x01\0\0\0\x05appleC\0\0\0\x0dSELECT 1\0Z\0\0\0\x05T";

// psycopg 3 with sslmode=prefer against a server without TLS.
const SSL_REQUEST: &[u8] = b"\0\0\0\x08\x04\xd2\x16/";

// psycopg2's copy_expert: COPY ... FROM STDIN, then the data.
const COPY: &[u8] = b"Q\0\0\0%COPY items (id, name) FROM STDIN\0";
const COPY_IN: &[u8] = b"G\0\0\0\x0b\0\0\x02\0\0\0\0";
const COPY_DATA: &[u8] = b"d\0\0\0\x1418\x09pear\x0a19\x09plum\x0ac\0\0\0\x04";
const COPY_DONE: &[u8] = b"C\0\0\0\x0bCOPY 2\0Z\0\0\0\x05I";

// Built by hand: CancelRequest for pid 0x658f with key 0x5c5759f8.
const CANCEL: &[u8] = b"\0\0\0\x10\x04\xd2\x16.\0\0e\x8f\\WY\xf8";
// Parse + Describe statement + Flush (asyncpg-style prepare) and its reply.
const PREPARE_FLUSH: &[u8] = b"P\0\0\0\x13s1\0SELECT $1\0\0\0D\0\0\0\x08Ss1\0H\0\0\0\x04";
const PREPARED: &[u8] =
    b"1\0\0\0\x04t\0\0\0\x0a\0\x01\0\0\0\x19T\0\0\0\x21\0\x01?column?\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0";

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn session() -> Vec<u8> {
    SESSION.concat()
}

fn final_auth_reply() -> Vec<u8> {
    concat(&[AUTH_SASL_FINAL, AUTH_OK, &session()])
}

fn key(request: &[u8]) -> String {
    let normalized = Postgres
        .normalize(request, &NormalizeOptions::default())
        .expect("postgres");
    assert_eq!(normalized.bytes, request);
    assert_eq!(normalized.scored_from, 0);
    String::from_utf8(normalized.key).unwrap()
}

fn complete(bytes: &[u8]) -> Completeness {
    Completeness::Complete(bytes.len())
}

/// Every proper prefix of a response frames as NeedMore.
fn assert_prefixes_need_more(request: &[u8], response: &[u8]) {
    for end in 0..response.len() {
        assert_eq!(
            Postgres.frame_response(request, &response[..end]),
            Completeness::NeedMore,
            "prefix of {end} bytes"
        );
    }
}

#[test]
fn scram_start_up_is_framed_message_by_message() {
    assert!(Postgres.detect_request(STARTUP));
    assert_eq!(Postgres.frame_request(STARTUP), complete(STARTUP));
    assert_eq!(
        Postgres.frame_response(STARTUP, AUTH_SASL),
        complete(AUTH_SASL)
    );
    assert_prefixes_need_more(STARTUP, AUTH_SASL);

    assert!(Postgres.detect_request(SASL_INITIAL));
    assert_eq!(Postgres.frame_request(SASL_INITIAL), complete(SASL_INITIAL));
    assert_eq!(
        Postgres.frame_response(SASL_INITIAL, AUTH_SASL_CONTINUE),
        complete(AUTH_SASL_CONTINUE)
    );

    let final_reply = final_auth_reply();
    assert_eq!(
        Postgres.frame_response(SASL_RESPONSE, &final_reply),
        complete(&final_reply)
    );
    assert_prefixes_need_more(SASL_RESPONSE, &final_reply);
    // A query already answered after the ReadyForQuery is not part of it.
    let with_more = concat(&[&final_reply, ROWS]);
    assert_eq!(
        Postgres.frame_response(SASL_RESPONSE, &with_more),
        complete(&final_reply)
    );
}

#[test]
fn a_recorded_start_up_splits_into_its_three_round_trips() {
    let request = concat(&[STARTUP, SASL_INITIAL, SASL_RESPONSE]);
    let response = concat(&[AUTH_SASL, AUTH_SASL_CONTINUE, &final_auth_reply()]);
    let units = split_exchange(&Postgres, &request, &response).expect("split");
    let (a, b, c) = (STARTUP.len(), SASL_INITIAL.len(), SASL_RESPONSE.len());
    let (x, y) = (AUTH_SASL.len(), AUTH_SASL_CONTINUE.len());
    assert_eq!(
        units,
        vec![
            Unit {
                request: 0..a,
                response: 0..x
            },
            Unit {
                request: a..a + b,
                response: x..x + y
            },
            Unit {
                request: a + b..a + b + c,
                response: x + y..response.len()
            },
        ]
    );
}

#[test]
fn start_up_replies_end_at_an_error_or_a_password_request() {
    let error = setup::error_response("FATAL", "no pg_hba.conf entry");
    let with_more = concat(&[&error, b"junk"]);
    assert_eq!(
        Postgres.frame_response(STARTUP, &with_more),
        complete(&error)
    );
    // AuthenticationMD5Password, with its salt.
    let md5 = b"R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04";
    assert_eq!(Postgres.frame_response(STARTUP, md5), complete(md5));
    // An AuthenticationOk alone (trust) is followed by the session.
    assert_eq!(
        Postgres.frame_response(STARTUP, AUTH_OK),
        Completeness::NeedMore
    );
    let trusted = concat(&[AUTH_OK, &session()]);
    assert_eq!(
        Postgres.frame_response(STARTUP, &trusted),
        complete(&trusted)
    );
    // A query's reply is not a start-up reply.
    assert_eq!(
        Postgres.frame_response(STARTUP, ROWS),
        Completeness::Unknown
    );
}

#[test]
fn answer_setup_is_authentication_ok_and_the_recorded_session() {
    let final_reply = final_auth_reply();
    let recorded = [
        Exchange {
            request: STARTUP,
            response: AUTH_SASL,
        },
        Exchange {
            request: SASL_INITIAL,
            response: AUTH_SASL_CONTINUE,
        },
        Exchange {
            request: SASL_RESPONSE,
            response: &final_reply,
        },
        Exchange {
            request: QUERY,
            response: ROWS,
        },
    ];
    let expected = concat(&[AUTH_OK, &session()]);
    assert_eq!(
        Postgres.answer_setup(STARTUP, &recorded),
        Some(expected.clone())
    );
    // A client that still sends a password gets the same.
    assert_eq!(
        Postgres.answer_setup(SASL_RESPONSE, &recorded),
        Some(expected.clone())
    );
    assert_eq!(
        Postgres.answer_setup(SASL_INITIAL, &recorded),
        Some(expected.clone())
    );
    // The reply frames as a complete start-up reply.
    assert_eq!(
        Postgres.frame_response(STARTUP, &expected),
        complete(&expected)
    );
    assert_eq!(
        Postgres.answer_setup(SSL_REQUEST, &recorded),
        Some(b"N".to_vec())
    );
    assert_eq!(Postgres.answer_setup(QUERY, &recorded), None);
    assert_eq!(Postgres.answer_setup(SHOW, &recorded), None);
}

#[test]
fn answer_setup_accepts_ssl_when_the_recording_did() {
    let refused = [Exchange {
        request: SSL_REQUEST,
        response: b"N",
    }];
    let accepted = [
        Exchange {
            request: SSL_REQUEST,
            response: b"S",
        },
        Exchange {
            request: STARTUP,
            response: AUTH_SASL,
        },
    ];
    assert_eq!(
        Postgres.answer_setup(SSL_REQUEST, &refused),
        Some(b"N".to_vec())
    );
    assert_eq!(Postgres.answer_setup(SSL_REQUEST, &[]), Some(b"N".to_vec()));
    assert_eq!(
        Postgres.answer_setup(SSL_REQUEST, &accepted),
        Some(b"S".to_vec())
    );
    // An `S` answering anything else is no SSLRequest's.
    let other = [Exchange {
        request: QUERY,
        response: b"S",
    }];
    assert_eq!(
        Postgres.answer_setup(SSL_REQUEST, &other),
        Some(b"N".to_vec())
    );
}

#[test]
fn answer_setup_takes_each_parameter_once_and_the_first_key() {
    let status_a1 = b"S\0\0\0\x08a\x001\0";
    let status_a2 = b"S\0\0\0\x08a\x002\0";
    let status_b = b"S\0\0\0\x08b\x003\0";
    let key_1 = b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x01";
    let key_2 = b"K\0\0\0\x0c\0\0\0\x02\0\0\0\x02";
    let ready = b"Z\0\0\0\x05I";
    // A ParameterStatus before AuthenticationOk is ignored, and so is a
    // response without ReadyForQuery.
    let unfinished = concat(&[AUTH_OK, status_b]);
    let response = concat(&[
        status_a2, AUTH_OK, status_a1, key_1, status_a2, status_b, key_2, ready,
    ]);
    let recorded = [
        Exchange {
            request: STARTUP,
            response: &unfinished,
        },
        Exchange {
            request: STARTUP,
            response: &response,
        },
    ];
    assert_eq!(
        Postgres.answer_setup(STARTUP, &recorded),
        Some(concat(&[AUTH_OK, status_a1, key_1, status_b, ready]))
    );
}

#[test]
fn answer_setup_without_a_recording_synthesises_a_session() {
    let reply = Postgres.answer_setup(STARTUP, &[]).expect("reply");
    assert!(reply.starts_with(AUTH_OK));
    assert!(reply.ends_with(b"K\0\0\0\x0c\0\0\x10\x92koalZ\0\0\0\x05I"));
    assert_eq!(Postgres.frame_response(STARTUP, &reply), complete(&reply));
    let rendered = Postgres.render(&reply, Side::Response).unwrap();
    for line in [
        "Authentication Ok",
        "ParameterStatus server_version=15.0",
        "ParameterStatus client_encoding=UTF8",
        "ParameterStatus server_encoding=UTF8",
        "ParameterStatus DateStyle=ISO, MDY",
        "ParameterStatus integer_datetimes=on",
        "ParameterStatus standard_conforming_strings=on",
        "ParameterStatus TimeZone=UTC",
        "BackendKeyData pid=4242",
        "ReadyForQuery I",
    ] {
        assert!(rendered.lines().any(|l| l == line), "{line} in {rendered}");
    }
}

#[test]
fn psycopg2_simple_query() {
    assert!(Postgres.detect_request(QUERY));
    assert_eq!(Postgres.frame_request(QUERY), complete(QUERY));
    assert_eq!(Postgres.frame_response(QUERY, ROWS), complete(ROWS));
    assert_prefixes_need_more(QUERY, ROWS);
    assert_eq!(key(QUERY), "pg Q SELECT id, name FROM items WHERE id = ?");
    assert!(!Postgres.is_setup(QUERY));
    assert_eq!(
        Postgres.render(QUERY, Side::Request).unwrap(),
        "Query: SELECT id, name FROM items WHERE id = 17"
    );
    assert_eq!(
        Postgres.render(ROWS, Side::Response).unwrap(),
        "RowDescription id int4, name text\nDataRow 17, 'apple'\nCommandComplete SELECT 1\nReadyForQuery T"
    );
}

#[test]
fn psycopg3_extended_group() {
    assert!(Postgres.detect_request(EXTENDED));
    assert_eq!(Postgres.frame_request(EXTENDED), complete(EXTENDED));
    // Without its Sync the group is not complete.
    let before_sync = &EXTENDED[..EXTENDED.len() - 5];
    assert_eq!(Postgres.frame_request(before_sync), Completeness::NeedMore);
    assert_eq!(
        Postgres.frame_response(EXTENDED, EXTENDED_ROWS),
        complete(EXTENDED_ROWS)
    );
    assert_prefixes_need_more(EXTENDED, EXTENDED_ROWS);
    assert_eq!(
        key(EXTENDED),
        "pg PBDES SELECT id, name FROM items WHERE id = $1"
    );
    assert_eq!(
        Postgres.render(EXTENDED, Side::Request).unwrap(),
        "Parse \"\" SELECT id, name FROM items WHERE id = $1 [int2]\n\
         Bind (\\x0011)\n\
         Describe portal \"\"\n\
         Execute\n\
         Sync"
    );
    assert_eq!(
        Postgres.render(EXTENDED_ROWS, Side::Response).unwrap(),
        "ParseComplete\nBindComplete\nRowDescription id int4, name text\nDataRow 17, 'apple'\n\
         CommandComplete SELECT 1\nReadyForQuery T"
    );
}

#[test]
fn an_error_in_a_group_ends_at_ready_for_query() {
    let reply = concat(&[ERROR_MISSING, READY_FAILED]);
    assert_eq!(
        Postgres.frame_response(EXTENDED_MISSING, &reply),
        complete(&reply)
    );
    assert_eq!(
        Postgres.frame_response(EXTENDED_MISSING, ERROR_MISSING),
        Completeness::NeedMore
    );
    assert_eq!(
        Postgres.render(&reply, Side::Response).unwrap(),
        "ErrorResponse ERROR 42P01 relation \"missing\" does not exist\nReadyForQuery E"
    );
}

#[test]
fn two_sync_groups_in_one_write_are_two_units() {
    let request = concat(&[EXTENDED, EXTENDED_MISSING]);
    let response = concat(&[EXTENDED_ROWS, ERROR_MISSING, READY_FAILED]);
    // Taken as one request, it is answered by two ReadyForQuery.
    assert_eq!(
        Postgres.frame_response(&request, &response),
        complete(&response)
    );
    assert_eq!(
        Postgres.frame_response(&request, EXTENDED_ROWS),
        Completeness::NeedMore
    );
    let units = split_exchange(&Postgres, &request, &response).expect("split");
    let (a, x) = (EXTENDED.len(), EXTENDED_ROWS.len());
    assert_eq!(
        units,
        vec![
            Unit {
                request: 0..a,
                response: 0..x
            },
            Unit {
                request: a..request.len(),
                response: x..response.len()
            },
        ]
    );
}

#[test]
fn a_pipeline_is_one_group_up_to_its_sync_then_a_silent_flush() {
    let request = concat(&[PIPELINE_SELECT_1, PIPELINE_SELECT_NAME, SYNC_FLUSH]);
    let sync_end = request.len() - 5;
    assert_eq!(
        Postgres.frame_request(&request),
        Completeness::Complete(sync_end)
    );
    assert_eq!(key(&request[..sync_end]), "pg PBDEPBDES SELECT ?");
    assert!(!Postgres.expects_response(&request[sync_end..]));
    let units = split_exchange(&Postgres, &request, PIPELINE_ROWS).expect("split");
    assert_eq!(
        units,
        vec![
            Unit {
                request: 0..sync_end,
                response: 0..PIPELINE_ROWS.len()
            },
            Unit {
                request: sync_end..request.len(),
                response: PIPELINE_ROWS.len()..PIPELINE_ROWS.len()
            },
        ]
    );
}

#[test]
fn a_flush_group_reply_is_predicted() {
    assert_eq!(
        Postgres.frame_request(PREPARE_FLUSH),
        complete(PREPARE_FLUSH)
    );
    assert!(Postgres.expects_response(PREPARE_FLUSH));
    assert_eq!(
        Postgres.frame_response(PREPARE_FLUSH, PREPARED),
        complete(PREPARED)
    );
    assert_prefixes_need_more(PREPARE_FLUSH, PREPARED);
    // A Parse error ends the reply: nothing else comes before a Sync.
    let error = setup::error_response("ERROR", "syntax error");
    assert_eq!(
        Postgres.frame_response(PREPARE_FLUSH, &error),
        complete(&error)
    );
    // What no Flush group is answered with.
    assert_eq!(
        Postgres.frame_response(PREPARE_FLUSH, ROWS),
        Completeness::Unknown
    );
    assert_eq!(key(PREPARE_FLUSH), "pg PDH SELECT $1");
    assert_eq!(
        Postgres.render(PREPARE_FLUSH, Side::Request).unwrap(),
        "Parse \"s1\" SELECT $1\nDescribe statement \"s1\"\nFlush"
    );
    assert_eq!(
        Postgres.render(PREPARED, Side::Response).unwrap(),
        "ParseComplete\nParameterDescription text\nRowDescription ?column? text"
    );
}

#[test]
fn a_named_statement_reused_is_keyed_by_its_name() {
    let bind_execute = b"B\0\0\0\x0e\0s1\0\0\0\0\0\0\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04";
    assert_eq!(Postgres.frame_request(bind_execute), complete(bind_execute));
    assert_eq!(key(bind_execute), "pg BES s1");
}

#[test]
fn copy_from_stdin() {
    assert_eq!(Postgres.frame_response(COPY, COPY_IN), complete(COPY_IN));
    assert_eq!(key(COPY), "pg Q COPY items (id, name) FROM STDIN");
    assert!(Postgres.detect_request(COPY_DATA));
    assert_eq!(Postgres.frame_request(COPY_DATA), complete(COPY_DATA));
    assert_eq!(
        Postgres.frame_request(&COPY_DATA[..COPY_DATA.len() - 5]),
        Completeness::NeedMore
    );
    assert_eq!(
        Postgres.frame_response(COPY_DATA, COPY_DONE),
        complete(COPY_DONE)
    );
    let two_chunks = concat(&[&COPY_DATA[..COPY_DATA.len() - 5], COPY_DATA]);
    assert_eq!(key(&two_chunks), "pg dc");
    let units = split_exchange(
        &Postgres,
        &concat(&[COPY, COPY_DATA]),
        &concat(&[COPY_IN, COPY_DONE]),
    );
    assert_eq!(units.map(|units| units.len()), Some(2));
    assert_eq!(
        Postgres.render(COPY_DATA, Side::Request).unwrap(),
        "CopyData 18\\tpear\\n19\\tplum\\n\nCopyDone"
    );
}

#[test]
fn ssl_request_is_answered_with_one_byte() {
    assert!(Postgres.detect_request(SSL_REQUEST));
    assert_eq!(Postgres.frame_request(SSL_REQUEST), complete(SSL_REQUEST));
    assert_eq!(
        Postgres.frame_response(SSL_REQUEST, b"N"),
        Completeness::Complete(1)
    );
    assert_eq!(
        Postgres.frame_response(SSL_REQUEST, b"S\x16\x03"),
        Completeness::Complete(1)
    );
    assert_eq!(
        Postgres.frame_response(SSL_REQUEST, b""),
        Completeness::NeedMore
    );
    assert_eq!(
        Postgres.frame_response(SSL_REQUEST, b"R"),
        Completeness::Unknown
    );
    assert_eq!(key(SSL_REQUEST), "pg ssl");
    assert!(Postgres.is_setup(SSL_REQUEST));
    assert_eq!(
        Postgres.render(SSL_REQUEST, Side::Request).unwrap(),
        "SSLRequest"
    );
    let units = split_exchange(
        &Postgres,
        &concat(&[SSL_REQUEST, STARTUP]),
        &concat(&[b"N", AUTH_SASL]),
    );
    assert_eq!(units.map(|units| units.len()), Some(2));
}

#[test]
fn terminate_and_cancel_expect_no_response() {
    assert_eq!(Postgres.frame_request(TERMINATE), complete(TERMINATE));
    assert!(!Postgres.expects_response(TERMINATE));
    assert_eq!(key(TERMINATE), "pg X");
    assert_eq!(
        Postgres.render(TERMINATE, Side::Request).unwrap(),
        "Terminate"
    );
    assert_eq!(Postgres.error_reply(TERMINATE, "x"), None);

    assert!(Postgres.detect_request(CANCEL));
    assert_eq!(Postgres.frame_request(CANCEL), complete(CANCEL));
    assert!(!Postgres.expects_response(CANCEL));
    assert_eq!(key(CANCEL), "pg cancel");
    assert!(!Postgres.is_setup(CANCEL));
    assert_eq!(
        Postgres.render(CANCEL, Side::Request).unwrap(),
        "CancelRequest pid=25999"
    );
    assert!(Postgres.expects_response(QUERY));
    // A query then Terminate in one write: two units, the second silent.
    let request = concat(&[QUERY, TERMINATE]);
    let units = split_exchange(&Postgres, &request, ROWS).expect("split");
    assert_eq!(units[1].request, QUERY.len()..request.len());
    assert_eq!(units[1].response, ROWS.len()..ROWS.len());
}

#[test]
fn set_up_requests() {
    assert!(Postgres.is_setup(STARTUP));
    assert!(Postgres.is_setup(SASL_INITIAL));
    assert!(Postgres.is_setup(SASL_RESPONSE));
    assert!(Postgres.is_setup(SHOW));
    let set = b"Q\0\0\0\x19set datestyle TO ISO\0";
    assert!(Postgres.is_setup(set));
    assert!(!Postgres.is_setup(QUERY));
    assert!(!Postgres.is_setup(EXTENDED));
    assert!(!Postgres.is_setup(TERMINATE));
    assert_eq!(key(STARTUP), "pg startup");
    assert_eq!(key(SASL_RESPONSE), "pg auth");
    assert_eq!(key(SHOW), "pg Q SHOW server_version");
    assert_eq!(key(set), "pg Q SET datestyle TO ISO");
}

#[test]
fn error_replies() {
    let error = b"E\0\0\0\x28SERROR\0VERROR\0CXX000\0Mno recording\0\0";
    assert_eq!(
        Postgres.error_reply(QUERY, "no recording"),
        Some(concat(&[error, b"Z\0\0\0\x05I"]))
    );
    assert_eq!(
        Postgres.error_reply(EXTENDED, "no recording"),
        Some(concat(&[error, b"Z\0\0\0\x05I"]))
    );
    let reply = Postgres.error_reply(EXTENDED, "no recording").unwrap();
    assert_eq!(Postgres.frame_response(EXTENDED, &reply), complete(&reply));
    assert_eq!(
        Postgres.error_reply(PREPARE_FLUSH, "no recording"),
        Some(error.to_vec())
    );
    assert_eq!(
        Postgres.error_reply(STARTUP, "no\0recording"),
        Some(b"E\0\0\0\x28SFATAL\0VFATAL\0CXX000\0Mno recording\0\0".to_vec())
    );
    assert_eq!(Postgres.error_reply(SSL_REQUEST, "x"), None);
    assert_eq!(Postgres.error_reply(b"GET / HTTP/1.1\r\n\r\n", "x"), None);
}

#[test]
fn start_up_and_authentication_render() {
    assert_eq!(
        Postgres.render(STARTUP, Side::Request).unwrap(),
        "StartupMessage user=postgres database=postgres application_name=app"
    );
    assert_eq!(
        Postgres.render(AUTH_SASL, Side::Response).unwrap(),
        "Authentication SASL SCRAM-SHA-256"
    );
    assert_eq!(
        Postgres.render(SASL_INITIAL, Side::Request).unwrap(),
        "SASLInitialResponse SCRAM-SHA-256 n,,n=,r=cxLv2ME5oABc5ABLQoOcw4+Z"
    );
    assert_eq!(
        Postgres
            .render(b"p\0\0\0\x0bsecret\0", Side::Request)
            .unwrap(),
        "PasswordMessage (6 bytes)"
    );
    let rendered = Postgres
        .render(&final_auth_reply(), Side::Response)
        .unwrap();
    let lines: Vec<_> = rendered.lines().collect();
    assert_eq!(
        lines[0],
        "Authentication SASLFinal v=9d78XEmnORg/Q/Svpnu1XKIqKTsCXh4FA07MQrs0RjY="
    );
    assert_eq!(lines[1], "Authentication Ok");
    assert_eq!(
        lines[11],
        "ParameterStatus server_version=15.20 (Debian 15.20-0+deb12u1)"
    );
    assert_eq!(lines[15], "BackendKeyData pid=25999");
    assert_eq!(lines[16], "ReadyForQuery I");
    assert_eq!(
        Postgres.render(b"N", Side::Response).unwrap(),
        "EncryptionResponse N (plaintext)"
    );
    assert_eq!(Postgres.render(&ROWS[..20], Side::Response), None);
    assert_eq!(
        Postgres.render(&ROWS[..60], Side::Response).unwrap(),
        "RowDescription id int4, name text\n(incomplete message: 9 bytes)"
    );
}

#[test]
fn other_protocols_are_not_claimed() {
    let others: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /items HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"DELETE /items/1 HTTP/1.1\r\n\r\n",
        b"PUT /x HTTP/1.1\r\n\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"PING\r\n",
        b"SET k 0 0 1\r\nv\r\n",
        b"QUIT\r\n",
        b"EXISTS k\r\n",
        b"HGETALL k\r\n",
        b"delete k\r\n",
        b"flush_all\r\n",
        b"cas k 0 0 1 1\r\nv\r\n",
        b"S 1 2\r\n",
        b"D\x00\x00\x00\x09xyz\r\n",
        // MySQL COM_QUERY (length 9, sequence 0) and a handshake response.
        b"\x09\x00\x00\x00\x03SELECT 1",
        b"\x20\x00\x00\x01\x85\xa6\x3f\x20\x00\x00\x00\x01\x21",
        // FastCGI BEGIN_REQUEST.
        b"\x01\x01\x00\x01\x00\x08\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00",
        b"",
    ];
    for bytes in others {
        assert!(
            !Postgres.detect_request(bytes),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
        assert_ne!(
            crate::detect_request(bytes).map(|p| p.name()),
            Some("postgres"),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    for bytes in &others[..others.len() - 1] {
        assert!(
            Postgres
                .normalize(bytes, &NormalizeOptions::default())
                .is_none()
                || !Postgres.detect_request(bytes)
        );
    }
    assert_eq!(
        Postgres.frame_request(b"GET / HTTP/1.1\r\n\r\n"),
        Completeness::Unknown
    );
    assert_eq!(
        Postgres.frame_request(b"*1\r\n$4\r\nPING\r\n"),
        Completeness::Unknown
    );
    assert_eq!(
        Postgres.render(b"GET / HTTP/1.1\r\n\r\n", Side::Request),
        None
    );
    // A Query whose text is not NUL-terminated is not a Query.
    assert!(!Postgres.detect_request(b"Q\0\0\0\x0cSELECT 1"));
    // Lengths below 4 or above 1 GiB are absurd.
    assert_eq!(
        Postgres.frame_request(b"Q\0\0\0\x03"),
        Completeness::Unknown
    );
    assert_eq!(
        Postgres.frame_request(b"Q\x40\0\0\x01"),
        Completeness::Unknown
    );
    assert_eq!(Postgres.frame_request(b"Q\x41"), Completeness::Unknown);
    assert_eq!(
        Postgres.frame_request(b"Q\x40\0\0\0"),
        Completeness::NeedMore
    );
}

#[test]
fn keys_are_capped() {
    let columns: Vec<String> = (0..200).map(|n| format!("column_{n}")).collect();
    let sql = format!("SELECT {} FROM t\0", columns.join(", "));
    let mut request = vec![b'Q'];
    request.extend_from_slice(&(sql.len() as u32 + 4).to_be_bytes());
    request.extend_from_slice(sql.as_bytes());
    let key = key(&request);
    assert_eq!(key.len(), MAX_KEY_LEN);
    assert!(key.starts_with("pg Q SELECT column_0, column_1, "));
    // Multi-byte characters are not split.
    let sql = format!("SELECT '{}', {}\0", "x", "é".repeat(200));
    let mut request = vec![b'Q'];
    request.extend_from_slice(&(sql.len() as u32 + 4).to_be_bytes());
    request.extend_from_slice(sql.as_bytes());
    let normalized = Postgres
        .normalize(&request, &NormalizeOptions::default())
        .unwrap();
    assert!(normalized.key.len() <= MAX_KEY_LEN);
    assert!(String::from_utf8(normalized.key).is_ok());
}

#[test]
fn no_prefix_of_any_message_panics() {
    let final_reply = final_auth_reply();
    let pipeline = concat(&[PIPELINE_SELECT_1, PIPELINE_SELECT_NAME, SYNC_FLUSH]);
    let requests: &[&[u8]] = &[
        STARTUP,
        SASL_INITIAL,
        SASL_RESPONSE,
        QUERY,
        SHOW,
        TERMINATE,
        EXTENDED,
        EXTENDED_MISSING,
        &pipeline,
        SSL_REQUEST,
        COPY,
        COPY_DATA,
        CANCEL,
        PREPARE_FLUSH,
    ];
    let responses: &[&[u8]] = &[
        AUTH_SASL,
        AUTH_SASL_CONTINUE,
        &final_reply,
        ROWS,
        EXTENDED_ROWS,
        ERROR_MISSING,
        PIPELINE_ROWS,
        COPY_IN,
        COPY_DONE,
        PREPARED,
        b"N",
    ];
    let options = NormalizeOptions::default();
    let everything: Vec<&[u8]> = requests.iter().chain(responses).copied().collect();
    for bytes in &everything {
        for end in 0..=bytes.len() {
            for part in [&bytes[..end], &bytes[end..]] {
                Postgres.detect_request(part);
                Postgres.frame_request(part);
                Postgres.expects_response(part);
                Postgres.normalize(part, &options);
                Postgres.is_setup(part);
                Postgres.error_reply(part, "x");
                Postgres.render(part, Side::Request);
                Postgres.render(part, Side::Response);
                let recorded = [Exchange {
                    request: part,
                    response: part,
                }];
                Postgres.answer_setup(part, &recorded);
                Postgres.answer_setup(STARTUP, &recorded);
                for request in requests {
                    Postgres.frame_response(request, part);
                    Postgres.frame_response(part, request);
                }
            }
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    // Bytes drawn mostly from what PostgreSQL messages are made of, so that
    // parsing gets deep; a fixed linear congruential generator keeps the
    // test deterministic.
    const ALPHABET: &[u8] = b"QPBDESHCFpdcfXRKZTGN123tnsIvA\0\0\0\0\x01\x02\x04\x05\x08\x0c\xff";
    let mut state: u64 = 0x5eed;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    let options = NormalizeOptions::default();
    for _ in 0..20_000 {
        let len = next() % 48;
        let bytes: Vec<u8> = (0..len)
            .map(|_| ALPHABET[next() % ALPHABET.len()])
            .collect();
        Postgres.detect_request(&bytes);
        Postgres.frame_request(&bytes);
        Postgres.expects_response(&bytes);
        Postgres.normalize(&bytes, &options);
        Postgres.is_setup(&bytes);
        Postgres.error_reply(&bytes, "x");
        Postgres.render(&bytes, Side::Request);
        Postgres.render(&bytes, Side::Response);
        Postgres.answer_setup(
            STARTUP,
            &[Exchange {
                request: &bytes,
                response: &bytes,
            }],
        );
        for request in [
            STARTUP,
            QUERY,
            EXTENDED,
            PREPARE_FLUSH,
            SSL_REQUEST,
            &bytes[..],
        ] {
            Postgres.frame_response(request, &bytes);
        }
        let _ = split_exchange(&Postgres, &bytes, &bytes);
    }
}

#[test]
fn the_catalogue_finds_postgres_in_every_request() {
    let pipeline = concat(&[PIPELINE_SELECT_1, PIPELINE_SELECT_NAME, SYNC_FLUSH]);
    let requests: &[&[u8]] = &[
        STARTUP,
        SSL_REQUEST,
        CANCEL,
        SASL_INITIAL,
        SASL_RESPONSE,
        QUERY,
        SHOW,
        COPY,
        COPY_DATA,
        EXTENDED,
        &pipeline,
        PREPARE_FLUSH,
        TERMINATE,
    ];
    for request in requests {
        assert_eq!(
            crate::detect_request(request).map(|protocol| protocol.name()),
            Some("postgres"),
            "{request:?}"
        );
        assert_eq!(
            crate::frame_request(request),
            Postgres.frame_request(request)
        );
    }
}

#[test]
fn the_server_closes_after_cancel_terminate_and_fatal_errors() {
    assert!(Postgres.closes_after(CANCEL, b""));
    assert!(Postgres.closes_after(TERMINATE, b""));
    assert!(Postgres.closes_after(&concat(&[QUERY, TERMINATE]), ROWS));
    assert!(!Postgres.closes_after(QUERY, ROWS));
    assert!(!Postgres.closes_after(STARTUP, AUTH_SASL));
    assert!(!Postgres.closes_after(SASL_RESPONSE, &final_auth_reply()));
    // Start-up errors are FATAL, whatever the (localised) severity says.
    let refused = Postgres
        .error_reply(STARTUP, "password authentication failed")
        .unwrap();
    assert!(Postgres.closes_after(STARTUP, &refused));
    assert!(Postgres.closes_after(SASL_RESPONSE, &refused));
    // An ERROR in a query does not end the session; a FATAL one does.
    let error = concat(&[ERROR_MISSING, READY_FAILED]);
    assert!(!Postgres.closes_after(EXTENDED_MISSING, &error));
    let terminated = b"E\0\0\0\x32SFATAL\0VFATAL\0C57P01\0Mterminating connection\0\0";
    assert!(Postgres.closes_after(QUERY, terminated));
    assert!(!Postgres.closes_after(b"GET / HTTP/1.1\r\n\r\n", terminated));
}

#[test]
fn the_test_vectors_are_whole_messages() {
    let responses: &[&[u8]] = &[
        AUTH_SASL,
        AUTH_SASL_CONTINUE,
        AUTH_SASL_FINAL,
        AUTH_OK,
        &session(),
        ROWS,
        EXTENDED_ROWS,
        ERROR_MISSING,
        READY_FAILED,
        PIPELINE_ROWS,
        COPY_IN,
        COPY_DONE,
        PREPARED,
    ];
    for response in responses {
        let covered: usize = wire::messages(response, BACKEND_TYPES)
            .map(|(_, message)| message.wire_len())
            .sum();
        assert_eq!(covered, response.len(), "{response:?}");
    }
    let requests: &[&[u8]] = &[
        STARTUP,
        SASL_INITIAL,
        SASL_RESPONSE,
        QUERY,
        SHOW,
        TERMINATE,
        EXTENDED,
        EXTENDED_MISSING,
        PIPELINE_SELECT_1,
        PIPELINE_SELECT_NAME,
        SYNC_FLUSH,
        SSL_REQUEST,
        COPY,
        COPY_DATA,
        CANCEL,
        PREPARE_FLUSH,
    ];
    for request in requests {
        let covered: usize = wire::messages(request, FRONTEND_TYPES)
            .map(|(_, message)| {
                assert!(wire::frontend_body_ok(message.kind, message.body));
                message.wire_len()
            })
            .sum();
        let startup =
            matches!(wire::read_startup(request), Step::Done((_, len)) if len == request.len());
        assert!(startup || covered == request.len(), "{request:?}");
    }
}

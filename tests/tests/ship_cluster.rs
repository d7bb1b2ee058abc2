//! `koala ship` to a three-node JetStream cluster (routes between the
//! nodes, a stream with three replicas) while a real service is recorded:
//! the node koala ship is connected to is killed in the middle of the run
//! and restarted; every session (and background record) arrives in the
//! stream exactly once.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use koala_tests::nats::*;
use koala_tests::replay::koala_bin;
use koala_tests::*;

const CONNECTIONS: usize = 3;
const PER_CONNECTION: usize = 8;

/// Every record (session or background) of the record directory's files,
/// by id, with how many times it appears.
fn recorded_ids(record: &std::path::Path) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for entry in std::fs::read_dir(record).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let session = koala_session::read_session_line(line).expect("a whole record");
            *ids.entry(session.id).or_insert(0) += 1;
        }
    }
    ids
}

#[test]
fn a_node_killed_mid_run_loses_and_duplicates_nothing() {
    let dir = TestDir::new("ship_cluster");
    let mut nats = Nats::cluster(&dir, 3);
    let url = nats.url();

    let ids = item_ids(CONNECTIONS, PER_CONNECTION);
    let deps = Dependencies::start(&dir, &ids);
    let record = dir.join("record");
    std::fs::create_dir_all(&record).unwrap();
    let mut shipper = Spec::new("ship", koala_bin())
        .args([
            "ship",
            "record",
            "--to",
            &url,
            "--stream",
            "KOALA",
            "--create",
            "--replicas",
            "3",
            "--poll-ms",
            "50",
            "--timeout",
            "2",
            "--host",
            "h1",
        ])
        .spawn(&dir);

    let port = free_port();
    let mut args = vec![port.to_string()];
    args.extend(deps.args());
    let mut service = Spec::python_fixture("record-service", "redis_service.py")
        .args(&args)
        .record_to(&record)
        .spawn(&dir);
    service.wait_for_port(port);
    let mut streams: Vec<TcpStream> = (0..CONNECTIONS).map(|_| connect(port)).collect();
    let request = |r: usize, streams: &mut Vec<TcpStream>| {
        for (c, stream) in streams.iter_mut().enumerate() {
            let id = format!("c{c}r{r}");
            let response = http_exchange(stream, &item_request(port, &id));
            assert_bytes(
                &response,
                &item_response(&id, 1),
                &format!("answer to {id}"),
            );
        }
    };
    for r in 0..PER_CONNECTION / 2 {
        request(r, &mut streams);
    }
    // The first half is in the stream: koala ship is connected and working.
    let half = CONNECTIONS * (PER_CONNECTION / 2 - 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stream_ids(&url, "KOALA").len() < half {
        assert!(shipper.exited().is_none(), "{}", shipper.output_report());
        assert!(
            Instant::now() < deadline,
            "nothing shipped\n{}",
            shipper.output_report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // koala ship connects to the first server of the list: kill that node
    // while requests go on, then restart it.
    nats.nodes[0].kill();
    for r in PER_CONNECTION / 2..PER_CONNECTION {
        request(r, &mut streams);
    }
    drop(streams);
    wait_for_sessions(&record, ids.len());
    // Every session reaches the stream while the node is down: koala ship
    // went on with another node (read through the two that run).
    let others = format!(
        "nats://127.0.0.1:{},127.0.0.1:{}",
        nats.nodes[1].port, nats.nodes[2].port
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sessions = stream_messages(&others, "KOALA")
            .iter()
            .filter(|m| m.subject.starts_with("koala.KOALA.session."))
            .count();
        if sessions >= ids.len() {
            break;
        }
        assert!(shipper.exited().is_none(), "{}", shipper.output_report());
        assert!(
            Instant::now() < deadline,
            "{sessions} of {} sessions in the stream with a node down\n{}",
            ids.len(),
            shipper.output_report()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nats.restart(&dir, 0);
    service.stop_cleanly();
    deps.stop();

    let recorded = recorded_ids(&record);
    assert_eq!(
        recorded.values().filter(|&&n| n > 1).count(),
        0,
        "ids are unique in the files"
    );
    let expected: usize = recorded.len();
    assert!(expected > ids.len(), "sessions and the background record");
    let deadline = Instant::now() + Duration::from_secs(60);
    let shipped = loop {
        let shipped = stream_ids(&url, "KOALA");
        if shipped.len() >= expected {
            break shipped;
        }
        assert!(shipper.exited().is_none(), "{}", shipper.output_report());
        assert!(
            Instant::now() < deadline,
            "{} of {expected} records in the stream\n{}",
            shipped.len(),
            shipper.output_report()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    shipper.stop_cleanly();
    let stderr = shipper.stderr();
    assert!(
        stderr.contains("retrying with back-off")
            && stderr.contains("the stream takes lines again"),
        "koala ship lost its server and went on with another\n{stderr}"
    );
    let mut counted: BTreeMap<String, usize> = BTreeMap::new();
    for id in &shipped {
        *counted.entry(id.clone()).or_insert(0) += 1;
    }
    assert_eq!(
        counted,
        recorded,
        "every record exactly once in the stream\n{}",
        shipper.output_report()
    );
    assert_eq!(
        stream_ids(&nats.nodes[0].url(), "KOALA").len(),
        expected,
        "the restarted node serves the whole stream too"
    );
}

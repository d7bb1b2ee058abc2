//! A Node `http` service (one event loop) calling redis through node-redis
//! 4 and a backend through fetch, six requests in flight at once, no hint
//! in its code: `koala record` loads the automatic request context
//! (`helpers/node/koala-context.js`, through NODE_OPTIONS) and every
//! session holds exactly its own calls; `koala replay`, with redis and the
//! backend stopped, passes every session one at a time and four at a time
//! (`koala_tests::event_loop` describes the set-up).

use koala_tests::event_loop::*;
use koala_tests::*;

fn stack() -> Stack {
    Stack {
        command: vec![
            require_program("node", "nodejs").display().to_string(),
            fixture("node/event_loop_node_service.js")
                .display()
                .to_string(),
        ],
        program: "node",
        incr: &["INCR"],
    }
}

#[test]
fn event_loop_node_sessions_hold_their_own_calls() {
    let stack = stack();
    let run = record("event_loop_node", &stack, &[]);
    assert_own_calls(&run, &stack);
}

#[test]
fn event_loop_node_replay() {
    let stack = stack();
    let mut run = record("event_loop_node_replay", &stack, &[]);
    assert_own_calls(&run, &stack);
    run.stop_dependencies();
    for concurrency in [1, 4] {
        assert_replays(&run, &stack, concurrency);
    }
}

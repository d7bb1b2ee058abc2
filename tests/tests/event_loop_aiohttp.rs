//! An aiohttp service (one thread, one event loop) calling redis through
//! `redis.asyncio` and a backend through `aiohttp.ClientSession`, six
//! requests in flight at once, no hint in its code: `koala record` loads
//! the automatic request context (`helpers/python`) and every session
//! holds exactly its own calls; `koala replay`, with redis and the backend
//! stopped, passes every session one at a time and four at a time
//! (`koala_tests::event_loop` describes the set-up).

use koala_tests::event_loop::*;
use koala_tests::*;

fn stack() -> Stack {
    Stack {
        command: vec![
            python().display().to_string(),
            "-u".to_string(),
            fixture("event_loop_aiohttp_service.py")
                .display()
                .to_string(),
        ],
        program: "python3",
        incr: &["INCRBY", "1"],
    }
}

#[test]
fn event_loop_aiohttp_sessions_hold_their_own_calls() {
    let stack = stack();
    let run = record("event_loop_aiohttp", &stack, &[]);
    assert_own_calls(&run, &stack);
}

#[test]
fn event_loop_aiohttp_replay() {
    let stack = stack();
    let mut run = record("event_loop_aiohttp_replay", &stack, &[]);
    assert_own_calls(&run, &stack);
    run.stop_dependencies();
    for concurrency in [1, 4] {
        assert_replays(&run, &stack, concurrency);
    }
}

//! Target `mqtt_command`: a command as the MQTT link receives it. The first line of the input is
//! the topic's command part (`ping`, `events/replay`, `config/set`, …: what follows
//! `<prefix>/<device>/cmd/`), the rest the payload. The topic goes through the link's topic
//! parsing, the payload through the command handler, with a real spool (SQLite, five events)
//! and a control channel that is drained after each command.
//!
//! Checked: every reply is a JSON object with a `status`, and a replay never republishes an
//! event before the `from_seq` it was asked for.

use serde_json::Value;
use std::sync::{Arc, Mutex, OnceLock};
use vigil_control::control::{ControlRequest, QUEUE};
use vigil_control::mqtt::Topics;
use vigil_control::mqtt::commands::{Context, Handler};
use vigil_control::spool::{Retention, Spool};

struct Fixture {
    handler: Handler,
    spool: Spool,
    requests: tokio::sync::mpsc::Receiver<ControlRequest>,
    topics: Topics,
}

fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = crate::scratch("commands");
        let _ = std::fs::remove_file(dir.join("events.db"));
        let spool = Spool::open(&dir.join("events.db"), Retention::default()).expect("spool");
        for i in 0..5 {
            spool
                .append(&format!("e{i}"), "cam", |seq| {
                    format!("{{\"seq\":{seq}}}").into_bytes()
                })
                .expect("append");
        }
        let (tx, requests) = tokio::sync::mpsc::channel(QUEUE);
        let handler =
            Handler::new(Arc::new(|| serde_json::json!({"cameras": {}}))).with_control(tx);
        Mutex::new(Fixture {
            handler,
            spool,
            requests,
            topics: Topics::new("vigil", "fuzz"),
        })
    })
}

pub fn run(data: &[u8]) {
    let (first, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let topic = format!("vigil/fuzz/cmd/{}", String::from_utf8_lossy(first));
    let mut guard = fixture().lock().unwrap_or_else(|e| e.into_inner());
    let f = &mut *guard;
    let Some(name) = f.topics.command_name(&topic) else {
        return;
    };
    let out = f
        .handler
        .handle(name, payload, &Context { spool: &f.spool });
    if out.deferred.is_none() {
        let reply: Value = serde_json::from_slice(&out.reply).expect("the reply is JSON");
        assert!(
            reply.get("status").and_then(Value::as_str).is_some(),
            "a reply without a status: {reply}"
        );
    }
    if let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(payload)
        && let Some(from) = request.get("from_seq").and_then(Value::as_u64)
    {
        for e in &out.republish {
            assert!(
                e.seq >= from,
                "events/replay from_seq {from} republished seq {}",
                e.seq
            );
        }
    }
    while f.requests.try_recv().is_ok() {}
}

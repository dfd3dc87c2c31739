//! Every payload the link publishes fits in one MQTT packet ([`MAX_PACKET`]). rumqttc fails
//! the whole connection on a packet over its limit, and what the link re-publishes on every
//! connection (the retained `ota/status`) would then keep it down for good; so a payload too
//! large is shortened here instead, never dropped and never allowed to drop the link.
//!
//! A JSON object keeps its shape: long lists and maps keep their first entries and long texts
//! their beginning, and a top-level `truncated` object says so, with counts (`original_bytes`,
//! `omitted_items`, `shortened_texts`). Anything else becomes a small JSON object saying what
//! was there.

use serde_json::{Map, Value, json};

/// Largest MQTT packet the link sends or accepts (commands carry whole config files).
pub const MAX_PACKET: usize = 1 << 20;

/// Largest payload of a publish on `topic`: the packet less its fixed header (at most 5
/// bytes), topic (2 + length) and packet id (2).
pub fn max_payload(topic: &str) -> usize {
    MAX_PACKET.saturating_sub(topic.len() + 16)
}

/// `payload` if it fits in `max` bytes, else a shortened JSON payload that does.
pub fn fit(payload: Vec<u8>, max: usize) -> Vec<u8> {
    if payload.len() <= max {
        return payload;
    }
    let original = payload.len();
    let parsed: Option<Map<String, Value>> = match serde_json::from_slice(&payload) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    };
    drop(payload);
    if let Some(obj) = &parsed {
        let (mut items, mut text) = (4096usize, 64 * 1024usize);
        loop {
            let mut stats = Stats::default();
            let mut v = Value::Object(obj.clone());
            shrink(&mut v, items, text, &mut stats);
            if let Value::Object(m) = &mut v {
                m.insert("truncated".into(), stats.marker(original));
            }
            if let Ok(bytes) = serde_json::to_vec(&v)
                && bytes.len() <= max
            {
                return bytes;
            }
            if items == 0 && text <= 64 {
                break;
            }
            (items, text) = (items / 4, (text / 4).max(64));
        }
    }
    // Nothing of the shape fits: keep the short identifying fields of a reply or status.
    let mut out = Map::new();
    for key in ["request_id", "status", "state", "seq", "id"] {
        if let Some(v) = parsed.as_ref().and_then(|m| m.get(key))
            && v.to_string().len() <= 256
        {
            out.insert(key.into(), v.clone());
        }
    }
    out.insert(
        "truncated".into(),
        json!({ "original_bytes": original, "note": NOTE }),
    );
    serde_json::to_vec(&Value::Object(out)).unwrap_or_default()
}

const NOTE: &str = "the payload was larger than the 1 MiB MQTT packet limit and was shortened";

#[derive(Default)]
struct Stats {
    omitted_items: u64,
    shortened_texts: u64,
}

impl Stats {
    fn marker(&self, original: usize) -> Value {
        json!({
            "original_bytes": original,
            "omitted_items": self.omitted_items,
            "shortened_texts": self.shortened_texts,
            "note": NOTE,
        })
    }
}

/// Keeps the first `items` entries of every list and map and the first `text` bytes of every
/// string, counting what went.
fn shrink(v: &mut Value, items: usize, text: usize, stats: &mut Stats) {
    match v {
        Value::String(s) if s.len() > text => {
            let mut cut = text;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            let more = s.len() - cut;
            s.truncate(cut);
            s.push_str(&format!("… [{more} more bytes]"));
            stats.shortened_texts += 1;
        }
        Value::Array(a) => {
            if a.len() > items {
                stats.omitted_items += (a.len() - items) as u64;
                a.truncate(items);
            }
            for x in a {
                shrink(x, items, text, stats);
            }
        }
        Value::Object(m) => {
            if m.len() > items {
                stats.omitted_items += (m.len() - items) as u64;
                let keep: Map<String, Value> = std::mem::take(m).into_iter().take(items).collect();
                *m = keep;
            }
            for x in m.values_mut() {
                shrink(x, items, text, stats);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_payloads_pass_unchanged() {
        let p = br#"{"a":1}"#.to_vec();
        assert_eq!(fit(p.clone(), 100), p);
    }

    #[test]
    fn a_huge_error_list_keeps_its_head_and_says_how_much_went() {
        let errors: Vec<String> = (0..15_000)
            .map(|i| format!("vigil.toml:{i}:1: cameras[{i}].url: {}", "x".repeat(80)))
            .collect();
        let reply = json!({"request_id": "r1", "status": "error", "message": "15000 errors", "data": {"errors": errors}});
        let bytes = serde_json::to_vec(&reply).unwrap();
        assert!(bytes.len() > MAX_PACKET);
        let max = max_payload("vigil/box/cmd/config/set/reply");
        let out = fit(bytes.clone(), max);
        assert!(out.len() <= max, "{} > {max}", out.len());
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["status"], "error");
        let kept = v["data"]["errors"].as_array().unwrap().len();
        assert!(kept > 0 && kept < 15_000);
        assert_eq!(v["truncated"]["omitted_items"], 15_000 - kept as u64);
        assert_eq!(v["truncated"]["original_bytes"], bytes.len());
    }

    #[test]
    fn a_long_text_and_non_json_are_shortened() {
        let reason = "é".repeat(3 << 20);
        let status = json!({"state": "failed", "reason": reason});
        let out = fit(serde_json::to_vec(&status).unwrap(), 100_000);
        assert!(out.len() <= 100_000);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["state"], "failed");
        assert!(v["reason"].as_str().unwrap().contains("more bytes]"));
        assert_eq!(v["truncated"]["shortened_texts"], 1);
        let out = fit(vec![b'x'; 5000], 1000);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["truncated"]["original_bytes"], 5000);
        // Many keys, each short: the map is cut too.
        let wide: Map<String, Value> = (0..50_000)
            .map(|i| (format!("cam{i:05}"), json!({"fps": 5})))
            .collect();
        let out = fit(
            serde_json::to_vec(&json!({"cameras": wide})).unwrap(),
            10_000,
        );
        assert!(out.len() <= 10_000);
    }
}

//! Property tests: the decoders never panic, whatever the bytes, and what they accept survives
//! a round trip through the event's JSON form.

use cordon_ingest::{decode_native, Format};
use proptest::prelude::*;

fn json_like() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("event.id".to_owned()),
        Just("@timestamp".to_owned()),
        Just("audit".to_owned()),
        Just("audit.decision".to_owned()),
        Just("audit.result_bytes".to_owned()),
        Just("audit.args_fp".to_owned()),
        Just("gen_ai.tool.call.arguments".to_owned()),
        Just("timestamp".to_owned()),
        Just("result".to_owned()),
        Just("duration".to_owned()),
        Just("mcp.tool.arguments".to_owned()),
        "[a-z.@_]{1,12}",
    ];
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("\"2026-11-20T10:00:00Z\"".to_owned()),
        Just("\"87ms\"".to_owned()),
        Just("\"allowed\"".to_owned()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() {
            f.to_string()
        } else {
            "0".into()
        }),
        "\"[ -~]{0,12}\"".prop_map(|s| s.replace('\\', "")),
    ];
    let value = leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z.]{1,8}", inner), 0..4).prop_map(|kv| {
                let body: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    });
    prop::collection::vec((key, value), 0..8).prop_map(|kv| {
        let body: Vec<String> = kv
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", body.join(","))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for f in [Format::Native, Format::Agentgateway, Format::Docker] {
            let _ = f.decode(&bytes);
        }
    }

    #[test]
    fn json_shaped_input_never_panics_and_round_trips(text in json_like()) {
        for f in [Format::Native, Format::Agentgateway, Format::Docker] {
            if let Ok(ev) = f.decode(text.as_bytes()) {
                let line = ev.to_string();
                let again = decode_native(line.as_bytes());
                prop_assert!(again.is_ok(), "{} → {} → {:?}", text, line, again);
                if f == Format::Native {
                    prop_assert_eq!(again.unwrap(), ev);
                }
            }
        }
    }

    #[test]
    fn truncations_of_a_valid_event_never_panic(cut in 0usize..400) {
        let line = br#"{"event.id":"e","@timestamp":"2026-11-20T10:00:00Z","audit":{"decision":"deny","args_fp":["a","b"]},"gen_ai.tool.call.arguments":{"to":["x@y.z"],"n":1.5},"x":{"y":[1,{"z":null}]}}"#;
        let cut = cut.min(line.len());
        let _ = decode_native(&line[..cut]);
    }
}

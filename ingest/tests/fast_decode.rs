//! The native decoder's fast path against the full decoder it stands in for: on any input,
//! `decode_native` gives exactly what `decode_reference` gives — the same event, or the same
//! error.

use cordon_ingest::{decode_native, decode_reference, CoreField};
use proptest::prelude::*;

fn same(text: &str) -> Result<(), TestCaseError> {
    let fast = decode_native(text.as_bytes());
    let full = decode_reference(text.as_bytes());
    match (&fast, &full) {
        (Ok(a), Ok(b)) => {
            prop_assert_eq!(a, b, "{}", text);
            prop_assert_eq!(a.arguments_bytes(), b.arguments_bytes(), "{}", text);
            prop_assert_eq!(a.id(), b.id(), "{}", text);
        }
        (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string(), "{}", text),
        _ => prop_assert!(false, "{} → {:?} against {:?}", text, fast, full),
    }
    Ok(())
}

/// Whitespace JSON allows between tokens, sometimes.
fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just(""), 1 => Just(" "), 1 => Just("\n\t "), 1 => Just("\r\n")]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("event.id".to_owned()),
        Just("@timestamp".to_owned()),
        Just("audit".to_owned()),
        Just("decision".to_owned()),
        Just("audit.decision".to_owned()),
        Just("audit.result_bytes".to_owned()),
        Just("audit.duration_ms".to_owned()),
        Just("audit.args_fp".to_owned()),
        Just("audit.result_fp".to_owned()),
        Just("audit.tool.description_sha256".to_owned()),
        Just("gen_ai.tool.call.arguments".to_owned()),
        Just("gen_ai.agent.id".to_owned()),
        Just("mcp.method.name".to_owned()),
        Just("x".to_owned()),
        Just("a\\\"b".to_owned()),
        Just("audit\\u002edecision".to_owned()),
        "[a-z.@_]{0,10}",
    ]
}

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("nul".to_owned()),
        Just("\"2026-11-20T10:00:00Z\"".to_owned()),
        Just("\"2026-11-20T10:00:00.123456789+01:00\"".to_owned()),
        Just("\"yesterday\"".to_owned()),
        Just("\"tools/call\"".to_owned()),
        Just("\"deny\"".to_owned()),
        Just("\"a\\\"quote\"".to_owned()),
        Just("\"\\u00e9t\\u00e9\"".to_owned()),
        Just("\"été ünïcode 東京\"".to_owned()),
        Just("\"tab\there\"".to_owned()),
        Just("[\"0123456789abcdef\",\"00000000000000ff\",\"0123456789abcdef\"]".to_owned()),
        Just("[\"0123456789ABCDEF\"]".to_owned()),
        Just("[\"0123456789abcde\"]".to_owned()),
        Just("[\"0123456789abcdef0\"]".to_owned()),
        Just("[\"0123456\\\"89abcdef\"]".to_owned()),
        Just("[\"0123456789abcdeg\"]".to_owned()),
        Just("[\"\\u0030123456789abcdef\"]".to_owned()),
        Just("[]".to_owned()),
        Just("[1,\"x\",null]".to_owned()),
        Just("{}".to_owned()),
        Just("-0".to_owned()),
        Just("-0.0".to_owned()),
        Just("0".to_owned()),
        Just("01".to_owned()),
        Just("1.".to_owned()),
        Just(".5".to_owned()),
        Just("-".to_owned()),
        Just("1e400".to_owned()),
        Just("1e-400".to_owned()),
        Just("2.5E+3".to_owned()),
        Just("1e2".to_owned()),
        Just("123456789012345678".to_owned()),
        Just("1234567890123456789".to_owned()),
        Just("-1234567890123456789".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() {
            format!("{f:e}")
        } else {
            "0".into()
        }),
        "\"[ -~]{0,20}\"",
    ]
}

fn value() -> impl Strategy<Value = String> {
    leaf().prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..4), ws())
                .prop_map(|(v, w)| format!("[{w}{}{w}]", v.join(","))),
            (prop::collection::vec((key(), inner), 0..4), ws()).prop_map(|(kv, w)| {
                let body: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{w}\"{k}\"{w}:{w}{v}"))
                    .collect();
                format!("{{{}{w}}}", body.join(","))
            }),
        ]
    })
}

fn record() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((key(), value(), ws()), 0..10),
        ws(),
        prop_oneof![8 => Just(""), 1 => Just(" x"), 1 => Just("}"), 1 => Just(",")],
    )
        .prop_map(|(kv, w, tail)| {
            let mut body: Vec<String> = kv
                .into_iter()
                .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                .collect();
            // Most records carry a timestamp, so that most get past the required fields.
            body.push("\"@timestamp\":\"2026-11-20T10:00:00Z\"".to_owned());
            format!("{w}{{{}}}{w}{tail}", body.join(","))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn fast_path_gives_what_the_full_decoder_gives(text in record()) {
        same(&text)?;
    }

    #[test]
    fn fast_path_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let fast = decode_native(&bytes).map_err(|e| e.to_string());
        let full = decode_reference(&bytes).map_err(|e| e.to_string());
        prop_assert_eq!(fast, full);
    }
}

#[test]
fn edge_cases_agree() {
    for text in [
        r#"{"@timestamp":"2026-11-20T10:00:00Z","audit.result_bytes":-0}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","audit.result_bytes":1e2}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","audit.result_bytes":1.5}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","audit.duration_ms":7}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","n":-0}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","n":1e-400}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","n":1e400}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","n":9007199254740993}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","n":0.1,"m":[0.1,{"a":1}]}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","audit":{"decision":"deny","x":{"y":[1]}}}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","audit.decision":"allow","audit.decision":"deny"}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":null}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":"text \"quoted\""}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":{"a":"]}","b":[{"c":"\\"}]}}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":{"a":1}}}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":{"a":1]}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":12 }"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":1 2}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":{"to":"a","to":"b"}}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":{ "n" : [ -0 , 1e400 ] }}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":{"n":[-0.0,2.5E+3,-7,18446744073709551615]}}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":{"a":{"b":[{"c":"x\ny"}]},"d":true}}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":{"a":[1,]}}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":{"a" 1}}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":{"a":nul}}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":truex}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":-0}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","audit.tool.description_sha256":{"t":"00ff","t":"11"}}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","audit.args_fp":["0123456789abcdef",]}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","audit.args_fp":null}"#,
        // Both lists, args first, a list repeated (the later one counts) and a duplicate.
        r#"{"@timestamp":"2026-11-20T10:00:00Z","audit.args_fp":["00000000000000aa"],"audit.result_fp":["00000000000000cc","00000000000000bb","00000000000000cc"],"audit.args_fp":["00000000000000dd","00000000000000ab"]}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","audit.result_fp":[],"audit.args_fp":["00000000000000aa"]}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.agent.id":12}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.agent.id":"a\u0000b"}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","": 1, "e": {"": {}}}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z"} "#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z"} {}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z",}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z""x":1}"#,
        r#"{"@timestamp":"2026-11-20T10:00:00Z","x":tru}"#,
        r#"{"@timestamp":"yesterday"}"#,
        r#"{"event.id":"x"}"#,
        "",
        "[]",
        "{",
    ] {
        same(text).unwrap_or_else(|e| panic!("{e}"));
    }
    // Nesting past serde_json's limit is refused the same way by both.
    let deep = format!(
        r#"{{"@timestamp":"2026-11-20T10:00:00Z","a":{}1{}}}"#,
        r#"{"b":"#.repeat(40),
        "}".repeat(40)
    );
    same(&deep).unwrap();
    let deeper = format!(
        r#"{{"@timestamp":"2026-11-20T10:00:00Z","a":{}{}1{}{}}}"#,
        r#"{"b":"#.repeat(30),
        "[".repeat(120),
        "]".repeat(120),
        "}".repeat(30)
    );
    same(&deeper).unwrap();
    // Deep inside the arguments: past the builder's depth, serde_json takes the value over.
    for n in [31, 33, 60, 140] {
        let args = format!(
            r#"{{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.tool.call.arguments":{}"x"{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        );
        same(&args).unwrap();
    }
    let ev = decode_native(
        br#"{"@timestamp":"2026-11-20T10:00:00Z","audit":{"decision":"deny"},"gen_ai.agent.id":"a1"}"#,
    )
    .unwrap();
    assert_eq!(ev.str(CoreField::Decision), Some("deny"));
}

/// A description map that recurs byte for byte is decoded once and shared: the second event
/// holds the first one's copy (so rules compare them by pointer), equal to what the full
/// decoder builds; a different map gets its own.
#[test]
fn recurring_description_maps_are_shared() {
    let record = |map: &str| {
        format!(
            r#"{{"@timestamp":"2026-11-20T10:00:00Z","mcp.method.name":"tools/list","audit.tool.description_sha256":{map}}}"#
        )
    };
    let same_map = r#"{"read_file":"ef232952b684bb05","write_file":"25017d3a8e6e9568"}"#;
    let other_map = r#"{"read_file":"ef232952b684bb05","write_file":"0000000000000000"}"#;
    let a = decode_native(record(same_map).as_bytes()).unwrap();
    let b = decode_native(record(same_map).as_bytes()).unwrap();
    let c = decode_native(record(other_map).as_bytes()).unwrap();
    let (ma, mb, mc) = (
        a.tool_description_sha256().unwrap(),
        b.tool_description_sha256().unwrap(),
        c.tool_description_sha256().unwrap(),
    );
    assert!(std::ptr::eq(ma, mb), "the recurring map is one copy");
    assert!(!std::ptr::eq(ma, mc));
    assert_ne!(ma, mc);
    for (text, ev) in [(record(same_map), &b), (record(other_map), &c)] {
        assert_eq!(ev, &decode_reference(text.as_bytes()).unwrap());
    }
    // Spacing inside the value makes other text; it is decoded on its own, to an equal map.
    let spaced = decode_native(
        record(r#"{ "read_file":"ef232952b684bb05","write_file":"25017d3a8e6e9568"}"#).as_bytes(),
    )
    .unwrap();
    assert_eq!(spaced.tool_description_sha256(), Some(ma));
}

/// The decoder predicts each top-level key from the order of the keys it saw before. A
/// record whose key only resembles the predicted one (longer, shorter, escaped, spaced, cut
/// off) must decode exactly as the full decoder decodes it, whatever the prediction.
#[test]
fn predicted_keys_are_checked_whole() {
    let ts = r#""@timestamp":"2026-11-20T10:00:00Z""#;
    let trained = format!(r#"{{{ts},"gen_ai.agent.id":"a","mcp.method.name":"tools/call"}}"#);
    for text in [
        format!(r#"{{{ts},"gen_ai.agent.idx":"a","mcp.method.name":"tools/call"}}"#),
        format!(r#"{{{ts},"gen_ai.agent.i":"a","mcp.method.name":"tools/call"}}"#),
        format!(r#"{{{ts},"gen_ai.agent.i\u0064":"a","mcp.method.name":"tools/call"}}"#),
        format!(r#"{{{ts},"gen_ai.agent.id" :"a", "mcp.method.name":"tools/call"}}"#),
        format!(r#"{{{ts}, "gen_ai.agent.id":"a","mcp.method.name" : "tools/list"}}"#),
        format!(r#"{{{ts},"x":1,"gen_ai.agent.id":"a","mcp.method.name":"tools/call"}}"#),
        format!(r#"{{{ts},"mcp.method.name":"tools/call","gen_ai.agent.id":"a"}}"#),
        format!(r#"{{{ts},"gen_ai.agent.id""a"}}"#),
        format!(r#"{{{ts},"gen_ai.agent.id"#),
        format!(
            r#"{{{ts},"gen_ai.agent.id":"a","mcp.method.name":"tools/call","gen_ai.agent.id":"b"}}"#
        ),
        format!(r#"{{"gen_ai.agent.id":"a",{ts}}}"#),
        trained.clone(),
    ] {
        same(&trained).unwrap();
        same(&trained).unwrap();
        same(&text).unwrap_or_else(|e| panic!("{e}"));
        same(&text).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn fingerprint_lists_read_back_sorted_and_distinct() {
    let text = r#"{"@timestamp":"2026-11-20T10:00:00Z","audit.args_fp":["00000000000000aa"],"audit.result_fp":["00000000000000cc","00000000000000bb","00000000000000cc"],"audit.args_fp":["00000000000000dd","00000000000000ab"]}"#;
    let ev = decode_native(text.as_bytes()).expect("decodes");
    assert_eq!(ev.result_fp(), Some(&[0xbb, 0xcc][..]));
    assert_eq!(ev.args_fp(), Some(&[0xab, 0xdd][..]));
    let ev = decode_native(br#"{"@timestamp":"2026-11-20T10:00:00Z","audit.result_fp":[]}"#)
        .expect("decodes");
    assert_eq!((ev.result_fp(), ev.args_fp()), (Some(&[][..]), None));
}

//! Property tests: the parser and compiler never panic on arbitrary or mutated queries, and
//! evaluation is deterministic.

#![allow(clippy::unwrap_used)]

use cordon_rules::{parse_query, CompiledQuery, Compiler, Library, RuleSet};
use proptest::prelude::*;

const SEEDS: &[&str] = &[
    r#"tool where gen_ai.tool.name : ("send_*", "post_*") and audit.data_class in~ ("SECRET", "pii")"#,
    r#"any where not (audit.result_bytes / 2 > 10 or length(?x.y) == null) and `a b` regex~ "x.*""#,
    r#"sequence by gen_ai.agent.id with maxspan=5m [tool where a == 1] ![tool where b] until [session where c]"#,
    r#"tool where between(gen_ai.tool.name, "a", "b", true) like~ "*x?" | head 3"#,
    r#"resource where cidrMatch(?src.ip, "10.0.0.0/8", "::1/128") and -audit.duration_ms <= -1.5e2"#,
];

fn mutate(seed: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut b: Vec<u8> = seed.as_bytes().to_vec();
    for &(pos, op, ch) in edits {
        if b.is_empty() {
            break;
        }
        let p = pos % b.len();
        const ALPHABET: &[u8] = b"()[]\"`~?!=<>:,|*. andornotin0123456789xyz\\";
        let ch = ALPHABET[ch as usize % ALPHABET.len()];
        match op % 3 {
            0 => {
                b.remove(p);
            }
            1 => b.insert(p, ch),
            _ => b[p] = ch,
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn mutated_queries_never_panic(
        seed in 0..SEEDS.len(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6),
    ) {
        let text = mutate(SEEDS[seed], &edits);
        if let Ok(q) = parse_query(&text) {
            let lib = Library::default();
            for schema in [true, false] {
                if let Ok(c) = Compiler::new(&lib, schema).query(&q) {
                    let CompiledQuery::Event(m) = c.query else { continue };
                    let ev = cordon_ingest::decode_native(br#"{"@timestamp":"2026-11-20T10:00:00Z","mcp.method.name":"tools/call","gen_ai.tool.name":"send_x","audit.result_bytes":40}"#).unwrap();
                    let _ = m.matches(&ev);
                }
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
        let _ = parse_query(&text);
        let _ = RuleSet::from_text("p.yaml", &text);
    }
}

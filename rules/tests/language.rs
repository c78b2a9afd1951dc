//! The query language end to end: text → compiled predicate → verdict on real events, and the
//! errors a rule author sees.

#![allow(clippy::unwrap_used)]

use cordon_ingest::{decode_native, decode_with, Event, Schema};
use cordon_rules::{parse_query, CompiledQuery, Compiler, Library, RuleSet};

fn ev(json: &str) -> Event {
    decode_native(json.as_bytes()).unwrap()
}

fn base() -> Event {
    ev(
        r#"{"event.id":"e1","@timestamp":"2026-11-20T10:00:00Z","mcp.method.name":"tools/call",
        "gen_ai.agent.id":"agent-1","gen_ai.tool.name":"Send_Email","audit.decision":"allow",
        "audit.data_class":"secret","audit.result_bytes":2048,"audit.duration_ms":12.5,
        "audit.args_fp":["00000000000000bb","00000000000000aa"],"gen_ai.tool.call.arguments":{"to":"x@evil.example","n":3},
        "custom":{"flag":true},"src.addr":"10.1.2.3"}"#,
    )
}

fn run(query: &str, e: &Event) -> bool {
    let q = parse_query(query).unwrap_or_else(|err| panic!("{query}: {}", err.render(query)));
    let c = Compiler::new(&Library::default(), true)
        .query(&q)
        .unwrap_or_else(|err| panic!("{query}: {}", err.render(query)));
    let CompiledQuery::Event(m) = c.query else {
        panic!("not an event query: {query}")
    };
    m.matches(e)
}

fn compile_err(query: &str) -> String {
    let q = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return e.to_string(),
    };
    match Compiler::new(&Library::default(), true).query(&q) {
        Ok(_) => panic!("{query} compiled"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn operators() {
    let e = base();
    let yes = [
        r#"tool where gen_ai.tool.name == "Send_Email""#,
        r#"tool where gen_ai.tool.name != "send_email""#,
        r#"tool where gen_ai.tool.name : "send_email""#,
        r#"tool where gen_ai.tool.name : ("x", "send_*")"#,
        r#"tool where gen_ai.tool.name like "Send_*""#,
        r#"tool where gen_ai.tool.name like~ "send_?mail""#,
        r#"tool where gen_ai.tool.name regex "S[a-z]+_Email""#,
        r#"tool where gen_ai.tool.name regex~ ("nope", "send_.*")"#,
        r#"tool where gen_ai.tool.name in ("a", "Send_Email")"#,
        r#"tool where gen_ai.tool.name in~ ("SEND_EMAIL")"#,
        r#"tool where gen_ai.tool.name not in ("send_email")"#,
        r#"tool where audit.result_bytes > 2047 and audit.result_bytes <= 2048"#,
        r#"tool where audit.result_bytes / 1024 == 2 and audit.result_bytes % 1000 == 48"#,
        r#"tool where audit.duration_ms * 2 == 25.0 and -audit.duration_ms < 0"#,
        r#"tool where audit.result_bytes + 2 - 1 >= 2049"#,
        r#"tool where audit.args_fp == "00000000000000bb""#,
        r#"tool where audit.args_fp in ("zzzz", "00000000000000aa") and length(audit.args_fp) == 2"#,
        r#"tool where gen_ai.tool.call.arguments.to : "*@evil.example""#,
        r#"tool where gen_ai.tool.call.arguments.n == 3"#,
        r#"tool where ?custom.flag == true"#,
        r#"tool where `src.addr` == "10.1.2.3""#,
        r#"tool where cidrMatch(?src.addr, "10.0.0.0/8")"#,
        r#"tool where ?missing.field == null and audit.decision != null"#,
        r#"any where event.category == "tool""#,
        r#"any where startsWith~(gen_ai.tool.name, "send") and endsWith(gen_ai.tool.name, "Email")"#,
        r#"any where length(gen_ai.tool.name) == 10 and indexOf(gen_ai.tool.name, "_") == 4"#,
        r#"any where substring(gen_ai.tool.name, 0, 4) == "Send" and concat(gen_ai.agent.id, "!") == "agent-1!""#,
        r#"any where between(gen_ai.tool.name, "Send", "il") == "_Ema""#,
        r#"any where number("12") + add(1, 2) == 15 and subtract(5, 2) == multiply(1, 3)"#,
        r#"any where string(audit.result_bytes) == "2048" and stringContains~(gen_ai.tool.name, "EMA")"#,
        r#"any where not (audit.decision == "deny")"#,
        r#"any where true"#,
    ];
    for q in yes {
        assert!(run(q, &e), "should match: {q}");
    }
    let no = [
        r#"tool where gen_ai.tool.name == "send_email""#,
        r#"tool where gen_ai.tool.name like "send_*""#,
        r#"tool where gen_ai.tool.name regex "send_.*""#,
        r#"tool where gen_ai.tool.name in ("send_email")"#,
        r#"tool where gen_ai.tool.name not in~ ("send_email")"#,
        r#"resource where true"#,
        r#"tool where audit.args_fp == "00000000000000cc""#,
        r#"any where false"#,
    ];
    for q in no {
        assert!(!run(q, &e), "should not match: {q}");
    }
}

#[test]
fn null_semantics_are_three_valued() {
    let e = base();
    // A comparison with a missing field is null: neither it nor its negation matches.
    assert!(!run(r#"any where ?nope == "x""#, &e));
    assert!(!run(r#"any where ?nope != "x""#, &e));
    assert!(!run(r#"any where not ?nope == "x""#, &e));
    // null and false is false; null or true is true.
    assert!(run(r#"any where not (?nope == "x" and false)"#, &e));
    assert!(run(r#"any where ?nope == "x" or true"#, &e));
    assert!(!run(r#"any where ?nope == "x" or false"#, &e));
    // Functions propagate null.
    assert!(!run(r#"any where length(?nope) == 0"#, &e));
    assert!(run(r#"any where length(?nope) == null"#, &e));
    assert!(!run(r#"any where ?nope in ("a")"#, &e));
    assert!(!run(r#"any where ?nope not in ("a")"#, &e));
    assert!(run(r#"any where ?nope in ("a", null)"#, &e));
}

#[test]
fn type_errors_are_reported_with_positions() {
    let cases = [
        (
            r#"tool where audit.decison == "deny""#,
            "unknown field `audit.decison`",
        ),
        (
            r#"tool where audit.decison == "deny""#,
            "did you mean `audit.decision`",
        ),
        (
            r#"tool where is_secert_read"#,
            "unknown field or macro `is_secert_read`",
        ),
        (
            r#"tool where audit.decision == 5"#,
            "cannot compare `audit.decision` (string) with the number 5 (number)",
        ),
        (
            r#"tool where audit.result_bytes : "x*""#,
            "applies to strings",
        ),
        (
            r#"tool where lenght(gen_ai.tool.name) > 3"#,
            "did you mean `length`",
        ),
        (
            r#"tool where length(gen_ai.tool.name, 2) > 3"#,
            "takes 1 argument, found 2",
        ),
        (
            r#"tool where length(audit.result_bytes) > 3"#,
            "argument 1 of `length` must be a string",
        ),
        (
            r#"tool where gen_ai.tool.name regex "(""#,
            "invalid regular expression",
        ),
        (r#"tool where gen_ai.tool.name"#, "not a condition"),
        (r#"tool where gen_ai.tool.name + 1 > 2"#, "needs numbers"),
        (
            r#"tool where gen_ai.tool.name in ("a", 1)"#,
            "cannot look for the number 1",
        ),
        (r#"tols where true"#, "did you mean `tool`"),
        (
            r#"tool where audit.result_bytes < null"#,
            "only `==` and `!=`",
        ),
        (
            r#"tool where length~(gen_ai.tool.name) > 1"#,
            "no case-insensitive",
        ),
    ];
    for (q, want) in cases {
        let err = compile_err(q);
        assert!(err.contains(want), "{q}\n  got: {err}\n  want: {want}");
    }
    // Column of the offending field.
    let err = compile_err("tool where\n  audit.decison == \"x\"");
    assert!(err.starts_with("2:3:"), "{err}");
}

#[test]
fn hunts_over_arbitrary_json_need_no_schema() {
    let e = decode_with(
        br#"{"process":{"name":"cmd.exe"},"user":"bob","n":5}"#,
        Schema::Generic,
    )
    .unwrap();
    let q = parse_query(r#"any where process.name : "CMD.*" and user == "bob" and n > 4"#).unwrap();
    let CompiledQuery::Event(m) = Compiler::new(&Library::default(), false)
        .query(&q)
        .unwrap()
        .query
    else {
        panic!("not an event query")
    };
    assert!(m.matches(&e));
}

#[test]
fn builtin_rules_load_and_pass_their_tests() {
    let set = RuleSet::builtin().unwrap_or_else(|e| panic!("{e}"));
    assert!(set.rules.len() >= 6);
    let failures = set.run_tests();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn rule_file_errors_carry_file_line_and_column() {
    let text =
        "id: r1\ntitle: t\nseverity: high\nquery: |\n  tool where\n    audit.decison == \"deny\"\n";
    let err = RuleSet::from_text("my.yaml", text).unwrap_err().to_string();
    assert!(
        err.contains("my.yaml:6:5: r1: unknown field `audit.decison`"),
        "{err}"
    );

    let text =
        "id: r1\ntitle: t\nseverity: high\nquery: 'tool where (audit.decision == \"deny\"'\n";
    let err = RuleSet::from_text("my.yaml", text).unwrap_err().to_string();
    assert!(
        err.contains("my.yaml:4:20: r1: unbalanced parentheses"),
        "{err}"
    );

    let text = "id: r1\ntitle: t\nseverity: high\nqurey: x\n";
    let err = RuleSet::from_text("my.yaml", text).unwrap_err().to_string();
    assert!(
        err.contains("my.yaml:4:1") && err.contains("unknown field `qurey`"),
        "{err}"
    );

    let text = "id: r1\ntitle: t\nseverity: severe\nquery: any where true\n";
    let err = RuleSet::from_text("my.yaml", text).unwrap_err().to_string();
    assert!(err.contains("unknown severity"), "{err}");

    let text = "macros:\n  loop_a: 'loop_b'\n  loop_b: 'loop_a'\n";
    let err = RuleSet::from_text("m.yaml", text).unwrap_err().to_string();
    assert!(err.contains("refers to itself"), "{err}");
}

#[test]
fn lists_macros_exceptions_and_tests_in_user_files() {
    let text = r#"
lists:
  egress_allowed_urls: ["https://ok.example/*"]
  noisy_agents: [agent-ci]
macros:
  is_upload: 'gen_ai.tool.name == "http_post"'
---
id: user.upload
title: Upload outside the allow-list
severity: low
query: 'tool where is_upload and not gen_ai.tool.call.arguments.url : (egress_allowed_urls)'
exceptions:
  - name: ci
    fields: [gen_ai.agent.id]
    values: [[agent-ci]]
  - name: by_condition
    condition: 'gen_ai.agent.id in (noisy_agents) or gen_ai.agent.id == "agent-qa"'
tests:
  match:
    - {mcp.method.name: tools/call, gen_ai.tool.name: http_post, gen_ai.agent.id: a1, gen_ai.tool.call.arguments: {url: "https://bad.example/"}}
  no_match:
    - {mcp.method.name: tools/call, gen_ai.tool.name: http_post, gen_ai.agent.id: a1, gen_ai.tool.call.arguments: {url: "https://ok.example/x"}}
    - {mcp.method.name: tools/call, gen_ai.tool.name: http_post, gen_ai.agent.id: agent-ci, gen_ai.tool.call.arguments: {url: "https://bad.example/"}}
    - {mcp.method.name: tools/call, gen_ai.tool.name: http_post, gen_ai.agent.id: agent-qa, gen_ai.tool.call.arguments: {url: "https://bad.example/"}}
"#;
    let set = RuleSet::from_text("user.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.rules.len(), 1);
    assert!(set.run_tests().is_empty(), "{:?}", set.run_tests());

    // A failing inline test is reported.
    let bad = text.replace("https://ok.example/x", "https://elsewhere.example/x");
    let set = RuleSet::from_text("user.yaml", &bad).unwrap();
    let f = set.run_tests();
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("no_match[0]"));
}

#[test]
fn regexes_match_whole_values() {
    let e = ev(
        r#"{"@timestamp":"2026-11-20T10:00:00Z","mcp.method.name":"tools/call","gen_ai.tool.name":"run_sql",
        "gen_ai.tool.call.arguments":{"sql":"SELECT *\nFROM x4_table WHERE a = '.'"}}"#,
    );
    assert!(run(
        r#"tool where gen_ai.tool.call.arguments.sql regex~ ".*x4_TABLE.*""#,
        &e
    ));
    assert!(run(
        r#"tool where gen_ai.tool.call.arguments.sql regex """SELECT.*'\.'""""#,
        &e
    ));
    assert!(!run(
        r#"tool where gen_ai.tool.call.arguments.sql regex "SELECT""#,
        &e
    ));
    assert!(!run(
        r#"tool where gen_ai.tool.call.arguments.sql regex ".*x5_table.*""#,
        &e
    ));
    assert!(run(
        r#"tool where gen_ai.tool.call.arguments.sql regex ".*x4_table.*|nothing""#,
        &e
    ));
    assert!(run(
        r#"tool where gen_ai.tool.name regex ".*sq.*|nothing""#,
        &e
    ));
    assert!(run(r#"tool where gen_ai.tool.name regex ".*_sql""#, &e));
    assert!(!run(r#"tool where gen_ai.tool.name regex ".*_sq""#, &e));
}

#[test]
fn user_files_may_redefine_builtin_names_but_not_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(&a, "lists:\n  egress_allowed_urls: [\"https://only.example/*\"]\nmacros:\n  mine: 'audit.decision == \"deny\"'\n").unwrap();
    let set = RuleSet::load(std::slice::from_ref(&a)).unwrap();
    assert_eq!(
        set.library.lists["egress_allowed_urls"].len(),
        1,
        "the user's list replaces the built-in one"
    );
    std::fs::write(&b, "macros:\n  mine: 'audit.decision == \"allow\"'\n").unwrap();
    let err = RuleSet::load(&[a, b]).unwrap_err().to_string();
    assert!(err.contains("macro defined twice"), "{err}");
}
